"""The publishing hook: sync (per-platform images from a post, cached by content) and async
(the ``blog-to-images`` deployment started on the Prefect test server, idempotently).

The async test registers a real deployment on ``prefect_test_harness``, checks the flow run the
hook creates (parameters, idempotency, status endpoint while SCHEDULED), then plays the worker:
it executes that flow run in this process (``prefect.flow_engine.run_flow``, sharing the loaded
model) and polls the hook's status endpoint until it says COMPLETED.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from flows.service import ServiceSettings, create_app
from flows.service.testing import running
from flows.settings import ModelSettings, load_settings

KEY = "hook-key-0123456789"
ENV = {"COVERCRAFT_API_KEYS": KEY}
AUTH = {"Authorization": f"Bearer {KEY}"}
POST = (Path(__file__).parent.parent / "examples" / "remote-work-rituals.md").read_text(encoding="utf-8")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def generator():
    from flows.model import get_generator

    return get_generator(ModelSettings(source="random-tiny"))


def _app(generator, tmp_path: Path, **hook):
    service = ServiceSettings.model_validate({
        "queue": {"max_batch": 4, "fixed_batch": True, "batch_wait_ms": 5},
        "hook": {"spool_dir": str(tmp_path / "spool"), **hook},
    })
    # Two candidates per post keeps the test short; everything else is the default pipeline.
    settings = load_settings(overrides={"sampling": {"candidates": 2}})
    return create_app(service, settings, generator=generator, environ=ENV, warm_up=False)


@pytest.fixture(scope="module")
def sync_server(generator, tmp_path_factory):
    app = _app(generator, tmp_path_factory.mktemp("hook"))
    with running(app) as srv:
        srv.app = app
        yield srv


def test_sync_returns_one_image_per_platform_at_its_size(sync_server):
    body = {"text": POST, "platforms": ["linkedin", "instagram", "x"], "style": "flat vector",
            "response_format": "b64_json", "seed": 3}
    resp = httpx.post(sync_server.base_url + "/v1/hooks/publish", json=body, headers=AUTH, timeout=300)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["mode"] == "sync" and out["status"] == "completed" and out["cached"] is False
    assert out["topics"] and all(isinstance(t, str) for t in out["topics"])
    assert "flat vector" in out["prompt"]
    from flows.service.hook import platform_sizes

    sizes = platform_sizes()
    assert [i["platform"] for i in out["images"]] == ["linkedin", "instagram", "x"]
    for item in out["images"]:
        img = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
        assert img.size == sizes[item["platform"]] == (item["width"], item["height"])


def test_same_post_twice_generates_once(sync_server):
    hook = sync_server.app.state.covercraft.hook
    body = {"text": POST + "\n\nA closing paragraph about async stand-ups.", "platforms": ["og"],
            "title": "Rituals"}

    async def twice_at_once():
        async with httpx.AsyncClient(base_url=sync_server.base_url, headers=AUTH, timeout=300) as client:
            return await asyncio.gather(*(client.post("/v1/hooks/publish", json=body) for _ in range(2)))

    before = hook.generations
    first, second = asyncio.run(twice_at_once())
    third = httpx.post(sync_server.base_url + "/v1/hooks/publish", json=body, headers=AUTH, timeout=300)
    assert [r.status_code for r in (first, second, third)] == [200, 200, 200]
    assert hook.generations == before + 1
    assert third.json()["cached"] is True and third.json()["title"] == "Rituals"
    assert {r.json()["id"] for r in (first, second, third)} == {first.json()["id"]}
    # URLs are fresh per answer and serve the same image.
    urls = [r.json()["images"][0]["url"] for r in (first, third)]
    assert urls[0] != urls[1]
    assert httpx.get(urls[0]).content == httpx.get(urls[1]).content
    status = httpx.get(sync_server.base_url + f"/v1/hooks/publish/{first.json()['id']}", headers=AUTH)
    assert status.status_code == 200 and status.json()["status"] == "completed"


@pytest.mark.parametrize("body, param", [
    ({"text": "x", "url": "https://example.com/post"}, "url"),
    ({}, "text"),
    ({"text": POST, "platforms": ["myspace"]}, "platforms"),
    ({"url": "ftp://example.com/post"}, "url"),
    ({"text": POST, "style": "cubism"}, "style"),
    ({"text": POST, "mode": "later"}, "mode"),
    ({"url": "http://127.0.0.1:9/internal-post"}, "url"),  # the fetcher's SSRF guard refuses loopback
])
def test_bad_publish_requests_name_the_param(sync_server, body, param):
    resp = httpx.post(sync_server.base_url + "/v1/hooks/publish", json=body, headers=AUTH)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["param"] == param


def test_publish_needs_a_key(sync_server):
    resp = httpx.post(sync_server.base_url + "/v1/hooks/publish", json={"text": POST})
    assert resp.status_code == 401


def test_async_starts_the_deployment_once_per_post(prefect_server, generator, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.pipeline import blog_to_images

    # The deployment's own parameters keep the run small and on the shared random-init model.
    overrides = {"model": {"source": "random-tiny"}, "sampling": {"candidates": 2},
                 "output": {"dir": str(tmp_path / "out")}}
    deployment = blog_to_images.to_deployment(name="covercraft-hook-test", parameters={"overrides": overrides})
    deployment.apply()
    app = _app(generator, tmp_path, deployment="blog-to-images/covercraft-hook-test")
    body = {"text": POST, "title": "Remote rituals", "platforms": ["linkedin", "x", "instagram"], "style": "watercolor",
            "mode": "async"}
    with running(app) as srv:
        first = httpx.post(srv.base_url + "/v1/hooks/publish", json=body, headers=AUTH, timeout=60)
        second = httpx.post(srv.base_url + "/v1/hooks/publish", json=body, headers=AUTH, timeout=60)
        other = httpx.post(srv.base_url + "/v1/hooks/publish", json={**body, "platforms": ["og"]},
                           headers=AUTH, timeout=60)
        assert [r.status_code for r in (first, second, other)] == [202, 202, 202], first.text
        run_id = first.json()["flow_run_id"]
        assert second.json()["flow_run_id"] == run_id  # Prefect's idempotency key: one run per post
        assert other.json()["flow_run_id"] != run_id
        status = httpx.get(srv.base_url + f"/v1/hooks/publish/{run_id}", headers=AUTH, timeout=60)
        assert status.status_code == 200
        assert status.json()["status"] == "SCHEDULED" and status.json()["flow_run_id"] == run_id
        missing = httpx.get(srv.base_url + "/v1/hooks/publish/00000000-0000-0000-0000-000000000000",
                            headers=AUTH, timeout=60)
        assert missing.status_code == 404

    async def read_run():
        async with get_client() as client:
            return await client.read_flow_run(run_id)

    run = asyncio.run(read_run())
    params = run.parameters
    assert params["platforms"] == ["linkedin", "x", "instagram-square"] and params["style"] == "watercolor"
    spooled = Path(params["source"]).read_text(encoding="utf-8")
    assert spooled.startswith('---\ntitle: "Remote rituals"\n---') and POST in spooled

    # Play the worker: execute that flow run in this process, then poll it through the hook.
    from prefect.flow_engine import run_flow

    state = run_flow(blog_to_images, flow_run=run, parameters=params, return_type="state")
    assert state.is_completed(), state.message
    manifest = state.result()
    assert manifest["title"] == "Remote rituals" and Path(manifest["output_dir"]).is_dir()
    with running(app) as srv:
        status = httpx.get(srv.base_url + f"/v1/hooks/publish/{run_id}", headers=AUTH, timeout=60).json()
    assert status["status"] == "COMPLETED"


def test_async_with_an_unknown_deployment_is_a_clear_error(prefect_server, generator, tmp_path):
    app = _app(generator, tmp_path, deployment="blog-to-images/does-not-exist")
    with running(app) as srv:
        resp = httpx.post(srv.base_url + "/v1/hooks/publish", json={"url": "https://example.com/p", "mode": "async"},
                          headers=AUTH, timeout=60)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "deployment_not_found"


def _children() -> set[int]:
    me = str(os.getpid())
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            out.add(int(stat.parent.name))
    return out


def test_async_without_a_prefect_server_is_refused_not_improvised(generator, tmp_path, monkeypatch):
    """No PREFECT_API_URL: a clear 503, and no temporary Prefect server started behind our back."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.service.app
    import flows.service.hook
    from flows.settings import ConfigError

    # The service answers from its own thread, which does not see a temporary_settings context
    # (a context variable), so the setting is read through the function the service calls.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        unset = flows.service.hook.prefect_api_url()
    assert unset is None
    monkeypatch.setattr(flows.service.hook, "prefect_api_url", lambda: unset)
    monkeypatch.setattr(flows.service.app, "prefect_api_url", lambda: unset)
    before = _children()
    with running(_app(generator, tmp_path)) as srv:
        resp = httpx.post(srv.base_url + "/v1/hooks/publish", headers=AUTH, timeout=60,
                          json={"url": "https://example.com/p", "mode": "async"})
        status = httpx.get(srv.base_url + f"/v1/hooks/publish/{uuid.uuid4()}", headers=AUTH, timeout=60)
    assert resp.status_code == 503 and status.status_code == 503
    assert resp.json()["error"]["code"] == "orchestrator_not_configured"
    assert "PREFECT_API_URL" in resp.json()["error"]["message"]
    assert _children() <= before
    with pytest.raises(ConfigError, match="default_mode is async but PREFECT_API_URL is not set"):
        _app(generator, tmp_path, default_mode="async")
