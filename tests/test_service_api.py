"""The images API through the official ``openai`` client, against uvicorn on loopback.

One random-init tiny generator and one running service per module (the tiny model compiles in a
few seconds); a second, "gated" service wraps the same generator so tests can hold a batch in
flight and observe queueing, batching, 429s and graceful shutdown deterministically.
"""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from flows.service import ServiceSettings, create_app
from flows.service.engine import ImageEngine, SampleWork
from flows.service.images import to_rgb_square
from flows.service.testing import running
from flows.settings import load_settings

KEY = "test-key-0123456789"
ENV = {"COVERCRAFT_API_KEYS": f"other-key,{KEY}"}
UPLOAD_CAP = 256 * 1024

pytestmark = [
    pytest.mark.slow,
    # The client marks the variations endpoint deprecated (OpenAI retired DALL·E 2); ours serves it.
    pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def generator():
    # The process-wide generator (shared with the hook tests): random-init tiny weights.
    from flows.model import get_generator
    from flows.settings import ModelSettings

    return get_generator(ModelSettings(source="random-tiny"))


def _service(**queue) -> ServiceSettings:
    # Fixed batches of 4 rows: every test compiles the same few shapes.
    return ServiceSettings.model_validate({
        "queue": {"max_pending": 16, "max_batch": 4, "fixed_batch": True, "batch_wait_ms": 5, **queue},
        "uploads": {"max_bytes": UPLOAD_CAP},
    })


@pytest.fixture(scope="module")
def server(generator):
    app = create_app(_service(), load_settings(), generator=generator, environ=ENV, warm_up=True)
    with running(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _photo(size=(96, 96), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _decode_b64(item) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(item.b64_json)))


# -- generations ------------------------------------------------------------------------------------
def test_generate_urls_are_served_pngs_of_the_requested_size(client):
    result = client.images.generate(prompt="a lighthouse at dawn", n=2, size="256x256")
    assert len(result.data) == 2
    assert result.data[0].url != result.data[1].url
    for item in result.data:
        assert item.revised_prompt == "a lighthouse at dawn"
        resp = httpx.get(item.url)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(resp.content)).size == (256, 256)


def test_generate_b64_with_style_and_extras(client):
    result = client.images.generate(
        prompt="a lighthouse", n=3, size="512x512", response_format="b64_json",
        extra_body={"style": "watercolor", "negative_prompt": "people", "temperature": 0.9},
    )
    assert len(result.data) == 3
    assert result.data[0].revised_prompt.startswith("a lighthouse, watercolor")
    images = [_decode_b64(d) for d in result.data]
    assert all(img.size == (512, 512) and img.format == "PNG" for img in images)


def test_same_seed_same_images_other_seed_other_images(client):
    def make(seed):
        res = client.images.generate(prompt="a red bicycle", n=2, size="256x256",
                                     response_format="b64_json", extra_body={"seed": seed})
        return [np.asarray(_decode_b64(d)) for d in res.data]

    a, b, c = make(7), make(7), make(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], a[1])  # the n samples of one request differ
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


# -- variations and edits -----------------------------------------------------------------------------
def test_variations(client):
    src = _png(_photo((120, 90)))
    res = client.images.create_variation(image=("photo.png", src, "image/png"), n=2, size="256x256",
                                         response_format="b64_json")
    assert [(_decode_b64(d).size) for d in res.data] == [(256, 256), (256, 256)]
    again = client.images.create_variation(image=("photo.png", src, "image/png"), n=2, size="256x256",
                                           response_format="b64_json", extra_body={"seed": 3})
    twice = client.images.create_variation(image=("photo.png", src, "image/png"), n=2, size="256x256",
                                           response_format="b64_json", extra_body={"seed": 3})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in twice.data]


def test_edit_keeps_pixels_outside_the_mask(client):
    photo = _photo((128, 128), seed=1)
    mask = Image.new("RGBA", (128, 128), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 64, 128))  # left half transparent: edit it
    res = client.images.edit(
        image=("photo.png", _png(photo), "image/png"), mask=("mask.png", _png(mask), "image/png"),
        prompt="a green field", n=2, size="256x256", response_format="b64_json",
    )
    original = to_rgb_square(photo, 256)
    for item in res.data:
        out = np.asarray(_decode_b64(item).convert("RGB"))
        assert out.shape == (256, 256, 3)
        assert np.array_equal(out[:, 128:], original[:, 128:])  # untouched half is the upload
        assert item.revised_prompt == "a green field"


def test_edit_uses_the_image_alpha_when_there_is_no_mask(client):
    photo = _photo((64, 64), seed=2).convert("RGBA")
    photo.paste((0, 0, 0, 0), (0, 0, 64, 16))
    res = client.images.edit(image=("photo.png", _png(photo), "image/png"), prompt="sky", size="256x256",
                             response_format="b64_json")
    assert len(res.data) == 1


def test_forced_tokens_keep_the_source_tokens(generator):
    """The engine's forced-token wiring: kept cells carry the upload's own VQGAN codes."""
    from dalle_core.types import SamplingSettings
    from flows.service.batching import Job

    engine = ImageEngine(generator, max_batch=4, fixed=True)  # the shape the service compiled
    g, r = engine.grid, engine.resolution
    source = to_rgb_square(_photo((r, r), seed=4), r)
    keep = np.zeros((2, g, g), dtype=bool)
    keep[:, : g // 2] = True
    work = SampleWork(prompts=("a cat", "a cat"), seed=1, settings=SamplingSettings(), source=source, keep=keep)
    (result,) = engine.run_batch([Job(work.batch_key(), work.rows, work, deadline=1e18)])
    codes = np.asarray(generator.encode(source[None]))[0]
    assert result.tokens.shape == (2, g, g) and result.images.shape == (2, r, r, 3)
    for row in result.tokens:
        assert np.array_equal(row[: g // 2], codes[: g // 2])


# -- errors as the client's exceptions ------------------------------------------------------------------
def test_missing_and_wrong_keys_are_authentication_errors(server):
    wrong = openai.OpenAI(base_url=server.base_url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        wrong.images.generate(prompt="x")
    assert err.value.body["code"] == "invalid_api_key"
    resp = httpx.post(server.base_url + "/v1/images/generations", json={"prompt": "x"})
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "missing_api_key"


@pytest.mark.parametrize("kwargs, param", [
    ({"prompt": "x", "n": 11}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "size": "300x300"}, "size"),
    ({"prompt": "x" * 1001}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x", "response_format": "gif"}, "response_format"),
    ({"prompt": "x", "model": "stable-diffusion"}, "model"),
    ({"prompt": "x", "extra_body": {"style": "cubism"}}, "style"),
    ({"prompt": "x", "extra_body": {"top_p": 1.5}}, "top_p"),
    ({"prompt": "x", "extra_body": {"seed": -1}}, "seed"),
    ({"prompt": "x", "extra_body": {"colour": "red"}}, "colour"),
    ({"prompt": "a nude figure"}, "prompt"),
])
def test_bad_values_are_bad_request_errors_naming_the_param(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.images.generate(**kwargs)
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
    assert err.value.body["type"] == "invalid_request_error" and err.value.body["message"]


def test_mask_of_another_size_is_refused(client):
    photo = _png(_photo((64, 64)))
    mask = _png(Image.new("RGBA", (32, 32), (0, 0, 0, 0)))
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(image=("p.png", photo, "image/png"), mask=("m.png", mask, "image/png"), prompt="x")
    assert err.value.body["param"] == "mask" and "same size" in err.value.body["message"]


def test_opaque_mask_and_missing_mask_are_refused(client):
    photo = _png(_photo((64, 64)))
    opaque = _png(Image.new("RGBA", (64, 64), (0, 0, 0, 255)))
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(image=("p.png", photo, "image/png"), mask=("m.png", opaque, "image/png"), prompt="x")
    assert err.value.body["param"] == "mask"
    with pytest.raises(openai.BadRequestError) as err:
        client.images.edit(image=("p.png", photo, "image/png"), prompt="x")
    assert err.value.body["param"] == "mask"


def test_only_png_and_jpeg_are_accepted(client):
    buf = io.BytesIO()
    _photo((32, 32)).save(buf, format="GIF")
    with pytest.raises(openai.BadRequestError) as err:
        client.images.create_variation(image=("p.gif", buf.getvalue(), "image/gif"))
    assert err.value.body["code"] == "invalid_image_format"
    buf = io.BytesIO()
    _photo((32, 32)).save(buf, format="JPEG")
    res = client.images.create_variation(image=("p.jpg", buf.getvalue(), "image/jpeg"), size="256x256")
    assert len(res.data) == 1
    with pytest.raises(openai.BadRequestError) as err:
        client.images.create_variation(image=("p.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image/png"))
    assert err.value.body["code"] == "invalid_image"


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny file whose header declares a huge image (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [5000, 40000])
def test_decompression_bombs_are_refused_before_decoding(client, side):
    bomb = _png_header_only(side, side)
    assert len(bomb) < 2000
    with pytest.raises(openai.BadRequestError) as err:
        client.images.create_variation(image=("bomb.png", bomb, "image/png"))
    assert err.value.body["code"] == "image_too_large" and err.value.body["param"] == "image"


def test_oversized_uploads_are_413(client, server):
    big = _png(_photo((400, 400)))  # incompressible noise: ~480 KB > the 256 KB cap
    assert len(big) > UPLOAD_CAP
    with pytest.raises(openai.APIStatusError) as err:
        client.images.create_variation(image=("big.png", big, "image/png"))
    assert err.value.status_code == 413 and err.value.body["param"] == "image"
    # Far past the cap the body is refused before it is parsed.
    resp = httpx.post(server.base_url + "/v1/images/variations", headers={"Authorization": f"Bearer {KEY}"},
                      files={"image": ("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * UPLOAD_CAP))})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_json_to_a_multipart_route_is_415(server):
    resp = httpx.post(server.base_url + "/v1/images/variations", json={"n": 1},
                      headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 415
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("body, param", [
    ({"prompt": "\x00\x00\x00"}, "prompt"),
    ({"prompt": "\u200b\u200e\x07 \t"}, "prompt"),
    ({"prompt": "x", "n": True}, "n"),
    ({"prompt": "x", "n": "3"}, "n"),
    ({"prompt": "x", "seed": 1.5}, "seed"),
])
def test_raw_json_that_a_lax_parser_would_accept_is_refused(server, body, param):
    resp = httpx.post(server.base_url + "/v1/images/generations", json=body,
                      headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_null_body_and_chunked_oversized_body(server):
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    resp = httpx.post(server.base_url + "/v1/images/generations", content=b"null", headers=auth)
    assert resp.status_code == 400
    assert "empty or null" in resp.json()["error"]["message"] and "None" not in resp.text

    def chunks():  # no Content-Length: the cap must count the bytes as they arrive
        yield b'{"prompt": "'
        for _ in range(4 * UPLOAD_CAP // 4096):
            yield b"x" * 4096
        yield b'"}'

    resp = httpx.post(server.base_url + "/v1/images/generations", content=chunks(), headers=auth)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"


def test_unknown_and_expired_urls_are_404(server):
    resp = httpx.get(server.base_url + "/v1/images/files/not-an-image.png")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "image_expired"
    resp = httpx.get(server.base_url + "/v1/nothing-here")
    assert resp.status_code == 404 and "error" in resp.json()


# -- models, health, schema -----------------------------------------------------------------------------
def test_models_health_and_openapi(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["covercraft-dalle-mini"]
    assert client.models.retrieve("dall-e-2").id == "dall-e-2"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    health = httpx.get(server.base_url + "/health").json()
    assert health["status"] == "ok" and health["model"]["variant"] == "tiny"
    schema = httpx.get(server.base_url + "/openapi.json").json()
    for path in ("/v1/images/generations", "/v1/images/variations", "/v1/images/edits", "/v1/models",
                 "/v1/hooks/publish", "/health"):
        assert path in schema["paths"], path
    assert "multipart/form-data" in schema["paths"]["/v1/images/edits"]["post"]["requestBody"]["content"]


# -- queueing, batching, 429, timeout, graceful shutdown -----------------------------------------------
class Gate:
    """Wraps the generator; ``sample_tokens`` waits at the gate and records its batch sizes."""

    def __init__(self, inner):
        self.inner = inner
        self.open = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample_tokens(self, prompts, *args, **kwargs):
        self.batches.append(list(prompts))
        self.entered.set()
        assert self.open.wait(60), "test never opened the gate"
        return self.inner.sample_tokens(prompts, *args, **kwargs)


def _in_thread(fn):
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except Exception as err:  # noqa: BLE001 - handed to the test
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _wait_for(predicate, what: str, timeout: float = 60.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def _accepts(base_url: str) -> bool:
    import socket

    host, port = base_url.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def test_queue_batches_compatible_requests_refuses_past_the_bound_and_drains_on_shutdown(generator):
    gate = Gate(generator)
    app = create_app(_service(max_pending=4, batch_wait_ms=0), load_settings(),
                     generator=gate, environ=ENV, warm_up=False)
    state = app.state.covercraft
    with running(app) as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)

        def gen(prompt, n=1):
            return lambda: client.images.generate(prompt=prompt, n=n, size="256x256")

        first, first_out = _in_thread(gen("first"))
        assert gate.entered.wait(60)
        others = [_in_thread(gen(p, n)) for p, n in (("second", 1), ("third", 2), ("fourth", 1))]
        _wait_for(lambda: state.queue.pending == 4, "4 pending requests")
        with pytest.raises(openai.RateLimitError) as err:
            client.images.generate(prompt="one too many")
        retry_after = err.value.response.headers["retry-after"]
        assert retry_after.isdigit() and int(retry_after) >= 1
        assert err.value.body["code"] == "rate_limit_exceeded"

        # Shut down while everything is in flight: the accepted requests still complete.
        stopper = threading.Thread(target=srv.stop, daemon=True)
        stopper.start()
        _wait_for(lambda: not _accepts(srv.base_url), "the server to stop accepting connections")
        gate.open.set()
        for thread, out in [(first, first_out), *others]:
            thread.join(120)
            assert "error" not in out, out.get("error")
        stopper.join(120)
        assert not srv.thread.is_alive()
    assert len(first_out["value"].data) == 1
    assert [len(out["value"].data) for _, out in others] == [1, 2, 1]
    # The first request ran alone (padded to 4 rows); the three queued behind it shared one call.
    assert gate.batches[0] == ["first"] * 4
    assert sorted(gate.batches[1]) == ["fourth", "second", "third", "third"]
    assert len(gate.batches) == 2
    assert state.queue.closed


def test_requests_past_their_timeout_get_504(generator):
    gate = Gate(generator)
    app = create_app(_service(request_timeout=0.5, batch_wait_ms=0), load_settings(), generator=gate,
                     environ=ENV, warm_up=False)
    with running(app) as srv:
        client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key=KEY, max_retries=0, timeout=60)
        try:
            with pytest.raises(openai.InternalServerError) as err:
                client.images.generate(prompt="slow", size="256x256")
            assert err.value.status_code == 504 and err.value.body["type"] == "timeout"
        finally:
            gate.open.set()
