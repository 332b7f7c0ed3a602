"""Service pieces without a model: settings layers, the CLI hook, the URL store, the batching
queue, upload checks and mask geometry."""

from __future__ import annotations

import argparse
import io
import threading

import numpy as np
import pytest
from PIL import Image

from flows.service.batching import BatchQueue, QueueClosed, QueueFull
from flows.service.errors import APIError
from flows.service.images import edit_cells, read_image, transparent_pixels
from flows.service.settings import ServiceSettings, load_service_config
from flows.service.store import ImageStore
from flows.settings import ConfigError

# -- settings ----------------------------------------------------------------------------------------


def test_service_yaml_matches_the_model_defaults():
    service, settings = load_service_config(environ={})
    assert service == ServiceSettings()
    assert settings.sampling.candidates == 4  # the pipeline half is configs/default.yaml


def test_layers_file_then_env_then_flags(tmp_path):
    cfg = tmp_path / "svc.yaml"
    cfg.write_text("service:\n  port: 9001\n  queue:\n    max_pending: 5\nsampling:\n  seed: 3\n")
    env = {"COVERCRAFT_SERVICE__QUEUE__MAX_PENDING": "7", "COVERCRAFT_SAMPLING__SEED": "4"}
    service, settings = load_service_config(cfg, {"port": 9002}, environ=env)
    assert (service.port, service.queue.max_pending, settings.sampling.seed) == (9002, 7, 4)
    service, settings = load_service_config(cfg, environ={})
    assert (service.port, service.queue.max_pending, settings.sampling.seed) == (9001, 5, 3)


def test_bad_service_keys_name_the_key(tmp_path):
    cfg = tmp_path / "svc.yaml"
    cfg.write_text("service:\n  queue:\n    max_pendng: 5\n")
    with pytest.raises(ConfigError, match=r"service\.queue\.max_pendng"):
        load_service_config(cfg, environ={})
    with pytest.raises(ConfigError, match=r"service\.port"):
        load_service_config(None, {"port": -1}, environ={})


def test_keys_come_from_the_named_variable_and_are_required():
    from flows.service import create_app

    service = ServiceSettings(api_keys_env="MY_KEYS")
    assert service.api_keys({"MY_KEYS": " a , b ,,"}) == {"a", "b"}
    with pytest.raises(ConfigError, match="MY_KEYS"):
        create_app(service, environ={})
    create_app(service.model_copy(update={"require_auth": False}), environ={})  # local mode


def test_cli_register_adds_the_api_command():
    from flows.service.cli import _service_overrides, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["api", "--port", "0", "--host", "0.0.0.0", "--no-auth", "--max-pending", "3"])
    assert args.command == "api" and callable(args.func)
    assert _service_overrides(args) == {"host": "0.0.0.0", "port": 0, "require_auth": False,
                                        "queue": {"max_pending": 3}}


# -- URL store ---------------------------------------------------------------------------------------


def test_store_expires_and_respects_its_byte_budget():
    now = [1000.0]
    store = ImageStore(ttl=10, max_bytes=2**20, clock=lambda: now[0])
    a, _ = store.put(b"a" * 600_000)
    assert store.get(a).data[:1] == b"a"
    b, _ = store.put(b"b" * 600_000)  # over budget: the oldest goes
    assert store.get(a) is None and store.get(b) is not None
    now[0] += 10.5
    assert store.get(b) is None and len(store) == 0
    assert len(a) >= 40  # unguessable ids


# -- batching queue ----------------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.batches: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()

    def __call__(self, jobs):
        self.batches.append([j.payload for j in jobs])
        self.started.set()
        assert self.release.wait(30)
        return [f"done {j.payload}" for j in jobs]


def test_queue_groups_by_key_within_max_batch_and_keeps_order():
    rec = Recorder()
    q = BatchQueue(rec, max_pending=10, max_batch=3, batch_wait=0).start()
    first = q.submit("k", 1, "a", timeout=30)
    assert rec.started.wait(30)
    jobs = [q.submit("k", 1, "b", 30), q.submit("other", 1, "x", 30), q.submit("k", 2, "c", 30),
            q.submit("k", 1, "d", 30), q.submit(None, 1, "solo", 30)]
    rec.release.set()
    assert first.future.result(30) == "done a"
    assert [j.future.result(30) for j in jobs] == ["done b", "done x", "done c", "done d", "done solo"]
    # b + c fill 3 rows; x has another key; d waits for the next k batch; solo runs alone.
    assert rec.batches == [["a"], ["b", "c"], ["x"], ["d"], ["solo"]]
    assert q.close(10)


def test_queue_bound_retry_after_and_close():
    rec = Recorder()
    q = BatchQueue(rec, max_pending=2, max_batch=4, batch_wait=0).start()
    a = q.submit("k", 1, "a", 30)
    assert rec.started.wait(30)
    b = q.submit("k", 1, "b", 30)
    with pytest.raises(QueueFull) as err:
        q.submit("k", 1, "c", 30)
    assert err.value.pending == 2 and err.value.retry_after >= 1
    closer = threading.Thread(target=q.close, args=(30,))
    closer.start()
    with pytest.raises(QueueClosed):
        for _ in range(1000):  # close() flips the flag first; the worker is still busy
            q.submit("k", 1, "late", 30)
    rec.release.set()
    closer.join(30)
    assert (a.future.result(1), b.future.result(1)) == ("done a", "done b")  # drained, not dropped


def test_queue_skips_cancelled_and_expired_jobs_and_fails_batches_together():
    calls = []

    def run(jobs):
        calls.append([j.payload for j in jobs])
        if any(j.payload == "boom" for j in jobs):
            raise RuntimeError("generator failed")
        return [j.payload for j in jobs]

    q = BatchQueue(run, max_pending=10, max_batch=8, batch_wait=0)
    gone = q.submit("k", 1, "cancelled", 30)
    gone.future.cancel()
    late = q.submit("k", 1, "late", timeout=-1)
    boom = [q.submit("j", 1, "boom", 30), q.submit("j", 1, "fine", 30)]
    q.start()
    with pytest.raises(TimeoutError):
        late.future.result(30)
    for job in boom:
        with pytest.raises(RuntimeError, match="generator failed"):
            job.future.result(30)
    assert ["cancelled"] not in calls and q.close(10)
    assert q.pending == 0


# -- uploads and masks -------------------------------------------------------------------------------


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_read_image_checks_size_format_and_pixels_before_decoding():
    ok = _png(Image.new("RGB", (40, 30), "red"))
    assert read_image(ok, param="image", max_bytes=10_000, max_pixels=10_000).size == (40, 30)
    with pytest.raises(APIError) as err:
        read_image(ok, param="image", max_bytes=10, max_pixels=10_000)
    assert err.value.status == 413
    with pytest.raises(APIError) as err:
        read_image(ok, param="mask", max_bytes=10_000, max_pixels=100)
    assert (err.value.status, err.value.param, err.value.code) == (400, "mask", "image_too_large")
    with pytest.raises(APIError) as err:
        read_image(b"GIF89a....", param="image", max_bytes=10_000, max_pixels=10_000)
    assert err.value.code == "invalid_image_format"


def test_edit_cells_mark_any_transparent_pixel_in_a_token_cell():
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.putpixel((9, 0), (0, 0, 0, 0))  # one pixel in cell (0, 1) of an 8×8 grid
    mask.paste((0, 0, 0, 0), (32, 32, 64, 64))  # the bottom-right quarter
    cells = edit_cells(transparent_pixels(mask), 8)
    expected = np.zeros((8, 8), dtype=bool)
    expected[0, 1] = True
    expected[4:, 4:] = True
    assert np.array_equal(cells, expected)
    wide = Image.new("RGBA", (96, 64), (0, 0, 0, 255))
    wide.paste((0, 0, 0, 0), (0, 0, 16, 64))  # outside the centred square: cropped away
    assert not edit_cells(transparent_pixels(wide), 8).any()


# -- engine wiring (a recording stand-in for the generator) -------------------------------------------


class RecordingGenerator:
    """Records sampling calls; tokens encode (seed, row) so the test can see where rows went."""

    class variant:  # noqa: N801 - mirrors Generator.variant's shape
        class bart:  # noqa: N801
            grid_size = 2

        class vqgan:  # noqa: N801
            resolution = 4

    def __init__(self):
        self.calls = []
        self.settings = []

    def sample_tokens(self, prompts, n, seed, settings, negative_prompt=None, forced_tokens=None,
                      forced_mask=None, progress=None):
        self.calls.append((list(prompts), seed))
        self.settings.append(settings)
        rows = np.arange(len(prompts), dtype=np.int32)[:, None, None, None]
        return np.broadcast_to(rows + 100 * seed, (len(prompts), n, 2, 2)).copy()

    def decode(self, tokens):
        return np.zeros((*tokens.shape[:-2], 4, 4, 3), np.uint8)

    def encode(self, images):
        return np.zeros((len(images), 2, 2), np.int32)


@pytest.mark.parametrize("fixed, padded", [(False, [4, 2]), (True, [4, 4])])
def test_engine_splits_large_requests_and_pads_calls(fixed, padded):
    from dalle_core.types import SamplingSettings
    from flows.service.batching import Job
    from flows.service.engine import ImageEngine, SampleWork

    gen = RecordingGenerator()
    engine = ImageEngine(gen, max_batch=4, fixed=fixed)
    big = SampleWork(prompts=("p",) * 6, seed=5, settings=SamplingSettings())
    (result,) = engine.run_batch([Job(big.batch_key(), big.rows, big, deadline=1e18)])
    assert [len(prompts) for prompts, _ in gen.calls] == padded
    assert [seed for _, seed in gen.calls] == [5, 6]  # one seed per call: no repeated noise
    assert result.tokens[:, 0, 0].tolist() == [500, 501, 502, 503, 600, 601]
    assert result.images.shape == (6, 4, 4, 3)
    assert engine.shapes() == ([4] if fixed else [1, 2, 4])


def test_warm_up_compiles_with_the_settings_a_plain_request_gets():
    from types import SimpleNamespace

    from flows.service.api import GenerationRequest, sampling_for
    from flows.service.engine import ImageEngine
    from flows.settings import load_settings

    state = SimpleNamespace(settings=load_settings())
    plain = sampling_for(state, GenerationRequest(prompt="a red circle"))
    assert sampling_for(state) == plain
    assert (plain.condition_scale, plain.top_k) == (1.0, 2)  # the configured defaults
    gen = RecordingGenerator()
    ImageEngine(gen, max_batch=2, fixed=False).warm_up(sampling_for(state))
    assert gen.settings and all(s == plain for s in gen.settings)


def test_seeded_requests_never_share_a_batch_unseeded_ones_do():
    from dalle_core.types import SamplingSettings
    from flows.service.engine import SampleWork

    s = SamplingSettings()
    a, b = SampleWork(("x",), 1, s), SampleWork(("y",), 1, s)
    assert a.batch_key() != b.batch_key()
    assert SampleWork(("x",), None, s).batch_key() == SampleWork(("y",), None, s).batch_key()
    assert SampleWork(("x",), None, s).batch_key() != SampleWork(("x",), None, s, negative_prompt="z").batch_key()
