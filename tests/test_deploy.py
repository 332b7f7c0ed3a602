"""`covercraft serve` pieces against a real Prefect API (prefect_test_harness): deployment parameter
schemas as the UI form sees them, the global concurrency limit, the image file server, artifacts."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import httpx
import pytest

from flows import artifacts, deploy, routing, worker
from flows.settings import ConfigError


def test_deploy_config_layers_and_errors(tmp_path):
    cfg = deploy.load_deploy_config()
    assert cfg.concurrency.name and cfg.concurrency.limit >= 1
    assert cfg.blog_deployment == f"blog-to-images/{cfg.deployments.blog_to_images}"
    mine = tmp_path / "d.yaml"
    mine.write_text("feeds:\n  urls: [https://b.example/feed.xml]\n  intervall: 5\n")
    with pytest.raises(ConfigError, match="unknown deploy config key 'feeds.intervall'"):
        deploy.load_deploy_config(mine)
    mine.write_text("concurrency:\n  limit: 0\n")
    with pytest.raises(ConfigError, match="'concurrency.limit'"):
        deploy.load_deploy_config(mine)
    with pytest.raises(ConfigError, match="cron expression"):
        deploy.load_deploy_config(overrides={"feeds": {"cron": "every minute"}})
    with pytest.raises(ConfigError, match="does not exist"):
        deploy.load_deploy_config(tmp_path / "missing.yaml")


@pytest.fixture(scope="module")
def applied(prefect_server, tmp_path_factory):
    """Both deployments built from config and registered on the test server; name → Deployment."""
    from prefect.client.orchestration import get_client

    suffix = uuid.uuid4().hex[:6]
    state = tmp_path_factory.mktemp("feeds") / "state.json"
    cfg = deploy.load_deploy_config(overrides={
        "deployments": {"blog_to_images": f"b-{suffix}", "watch_feed": f"w-{suffix}"},
        "feeds": {"urls": ["http://127.0.0.1:9/feed.xml"], "cron": "*/5 * * * *", "state_file": str(state),
                  "parameters": {"style": "watercolor"}},
    })
    out = {}
    with get_client(sync_client=True) as client:
        for dep in deploy.build_deployments(cfg):
            dep_id = dep.apply()
            out[dep.flow_name] = client.read_deployment(dep_id)
    return cfg, out


def test_blog_form_schema(applied):
    from nlp.prompt import STYLE_PRESETS

    _, deps = applied
    schema = deps["blog-to-images"].parameter_openapi_schema
    props = schema["properties"]
    assert schema["required"] == ["source"]
    assert props["source"]["type"] == "string" and props["source"]["minLength"] == 1
    style = next(s for s in props["style"]["anyOf"] if "enum" in s)
    assert style["enum"] == list(STYLE_PRESETS)
    cands = next(s for s in props["candidates"]["anyOf"] if s.get("type") == "integer")
    assert (cands["minimum"], cands["maximum"]) == (1, 64)
    seed = next(s for s in props["seed"]["anyOf"] if s.get("type") == "integer")
    assert seed["minimum"] == 0
    plat = next(s for s in props["platforms"]["anyOf"] if s.get("type") == "array")
    from dalle_core.cover import load_platforms

    assert plat["items"]["enum"] == load_platforms().names()  # presets and their aliases
    assert next(s for s in props["upscale"]["anyOf"] if s.get("type")) == {"type": "boolean"}
    for name in ("source", "style", "candidates", "seed", "negative_words", "upscale", "platforms"):
        assert props[name].get("description"), f"{name} has no description for the UI form"
    # Property order is the form's field order.
    assert [props[n]["position"] for n in ("source", "style", "candidates")] == [0, 1, 2]
    # The form starts from the values the runs would use anyway (a drop-down, not an unset toggle).
    from flows.settings import load_settings

    settings = load_settings()
    defaults = deps["blog-to-images"].parameters
    assert defaults["style"] == settings.prompt.style and defaults["candidates"] == settings.sampling.candidates
    assert "source" not in defaults
    # Runs import the flow by module name, so what they pickle for the task worker unpickles there.
    assert deps["blog-to-images"].entrypoint == "flows.pipeline.blog_to_images"


def test_server_rejects_out_of_bounds_form_values(applied):
    """The deployment enforces its schema: a Custom run with a bad value is refused, a good one starts."""
    from prefect.client.orchestration import get_client

    _, deps = applied
    dep = deps["blog-to-images"]
    assert dep.enforce_parameter_schema
    with get_client(sync_client=True) as client:
        for bad in ({"source": "https://b.example/p", "candidates": 0},
                    {"source": "https://b.example/p", "style": "crayon"},
                    {"source": "https://b.example/p", "candidate": 2},  # a misspelt parameter
                    {"style": "photo"}):
            with pytest.raises(Exception, match="422|[Vv]alidation"):
                client.create_flow_run_from_deployment(dep.id, parameters=bad)
        run = client.create_flow_run_from_deployment(
            dep.id, parameters={"source": "https://b.example/p", "style": "pencil sketch", "candidates": 2})
    assert run.parameters["candidates"] == 2


def test_watch_feed_deployment_from_config(applied):
    cfg, deps = applied
    dep = deps["watch-feed"]
    assert [s.schedule.cron for s in dep.schedules] == ["*/5 * * * *"]
    assert dep.parameters["feeds"] == ["http://127.0.0.1:9/feed.xml"]
    assert dep.parameters["deployment"] == cfg.blog_deployment
    assert dep.parameters["parameters"] == {"style": "watercolor"}
    assert Path(dep.parameters["state_file"]).is_absolute()
    assert dep.parameter_openapi_schema["required"] == ["feeds", "state_file"]
    assert dep.parameter_openapi_schema["additionalProperties"] is False
    for name, prop in dep.parameter_openapi_schema["properties"].items():
        assert prop.get("description"), f"watch-feed's {name} has no description for the UI form"


def test_concurrency_limit_created_once_and_strict(prefect_server, monkeypatch):
    from prefect.client.orchestration import get_client

    name = f"gen-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv(routing.LIMIT_ENV, name)
    with pytest.raises(Exception, match=name):  # strict: a missing limit is an error, not a free pass
        with routing.generation_slot():
            pass
    assert deploy.ensure_concurrency_limit(name, 1) is True
    assert deploy.ensure_concurrency_limit(name, 3) is False  # kept as the operator set it
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(name).limit == 1
        with routing.generation_slot():
            assert client.read_global_concurrency_limit_by_name(name).active_slots == 1
        assert client.read_global_concurrency_limit_by_name(name).active_slots == 0


def test_file_server_serves_only_files_under_root(tmp_path):
    root = tmp_path / "out"
    (root / "post").mkdir(parents=True)
    (root / "post" / "cover.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "secret.txt").write_text("no")
    files = deploy.FileServer(root, port=0).start()
    try:
        assert httpx.get(f"{files.url}/post/cover.png").content == b"\x89PNG fake"
        assert httpx.get(f"{files.url}/post/").status_code == 404  # no listings
        assert httpx.get(f"{files.url}/../secret.txt").status_code == 404
        base = files.url.removesuffix("/files")
        assert httpx.get(f"{base}/post/cover.png").status_code == 404
        env = {artifacts.FILES_URL_ENV: files.url, artifacts.FILES_ROOT_ENV: str(root)}
        url = artifacts.file_url(root / "post" / "cover.png", env)
        assert url == f"{files.url}/post/cover.png"
        assert artifacts.file_url(tmp_path / "secret.txt", env) is None
        assert artifacts.file_url(root / "post" / "cover.png", {}) is None
    finally:
        files.close()


MANIFEST = {
    "source": "https://b.example/p", "title": "A | B", "prompt": "a red circle", "negative_prompt": "",
    "article": {"extractor": "trafilatura", "characters": 1200},
    "model": {"name": "tiny", "random_init": True}, "seed": 3,
    "topics": {"extractor": "offline", "merged": [{"phrase": "red circle", "score": 0.9}]},
    "ranking": "clip",
    "candidates": [{"file": "candidate-02.png", "rank": 1, "score": 0.31, "sample_index": 1},
                   {"file": "candidate-01.png", "rank": 2, "score": 0.12, "sample_index": 0}],
    "timings": {"fetch": 0.5, "generate": 2.0},
}


def test_summary_markdown_and_rows():
    urls = {"cover.png": "http://h/files/p/cover.png", "candidate-02.png": "http://h/files/p/candidate-02.png",
            "candidate-01.png": None}
    md = artifacts.summary_markdown(MANIFEST, Path("/out/p"), urls)
    assert md.startswith("# A \\| B\n")
    assert "![cover](http://h/files/p/cover.png)" in md
    assert "**Source:** https://b.example/p (text by trafilatura)" in md
    assert "| 1 | candidate-02.png | 0.3100 | ![candidate-02.png](http://h/files/p/candidate-02.png) |" in md
    assert "| 2 | candidate-01.png | 0.1200 | `/out/p/candidate-01.png` |" in md
    assert "| 0.50 | 2.00 | 2.50 |" in md
    rows = artifacts.candidate_rows(MANIFEST, urls)
    assert [r["file"] for r in rows] == ["candidate-02.png", "candidate-01.png"]
    assert artifacts.artifact_key("Covercraft", "Why_Red circle!") == "covercraft-why-red-circle"


def test_publish_and_progress_artifacts(prefect_server, tmp_path, monkeypatch):
    """Artifacts land on the server; the progress artifact is updated in steps, ending at 100 %."""
    import prefect.artifacts
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    folder = tmp_path / "out" / f"post-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    monkeypatch.setenv(artifacts.FILES_URL_ENV, "http://127.0.0.1:4300/files")
    monkeypatch.setenv(artifacts.FILES_ROOT_ENV, str(tmp_path / "out"))
    calls = []
    original = prefect.artifacts.update_progress_artifact
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact",
                        lambda aid, pct: calls.append(pct) or original(aid, pct))

    @flow
    def fake_run():
        from prefect.runtime import flow_run

        progress_id = artifacts.start_progress("sampling")
        seen = []
        update = artifacts.progress_updater(progress_id, also=lambda d, t: seen.append(d))
        for done in range(1, 257):
            update(done, 256)
        assert len(seen) == 256
        artifacts.publish_run(MANIFEST, folder)
        return flow_run.id

    run_id = fake_run()
    assert 15 <= len(calls) <= 25 and calls[-1] == 100.0
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(str(run_id))])))
    by_type = {}
    for art in arts:
        by_type.setdefault(art.type, []).append(art)
    assert by_type["progress"][0].data == 100.0
    assert f"/files/{folder.name}/cover.png" in by_type["markdown"][0].data
    images = sorted(a.data for a in by_type["image"])
    assert images == sorted(f"http://127.0.0.1:4300/files/{folder.name}/{n}"
                            for n in ("cover.png", "candidate-01.png", "candidate-02.png"))
    assert len(by_type["table"]) == 1


def test_route_is_checked(monkeypatch):
    monkeypatch.setenv(routing.ROUTE_ENV, "gpu-please")
    with pytest.raises(ValueError, match="task-worker"):
        routing.route()
    monkeypatch.delenv(routing.ROUTE_ENV)
    assert routing.route() == "inline"
    assert os.environ.get(routing.ROUTE_ENV) is None


def test_prefect_yaml_and_k8s_template_are_consistent():
    """prefect.yaml's entrypoints load and its parameters fit the flows; the job template's
    placeholders are all declared variables and it requests GPUs."""
    import re

    import yaml
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    root = Path(__file__).resolve().parents[1]
    project = yaml.safe_load((root / "prefect.yaml").read_text())
    names = set()
    for dep in project["deployments"]:
        fl = load_flow_from_entrypoint(dep["entrypoint"])  # module paths, see prefect.yaml
        names.add(fl.name)
        props = parameter_schema(fl).model_dump()["properties"]
        assert set(dep.get("parameters", {})) <= set(props), dep["entrypoint"]
    assert names == {"blog-to-images", "watch-feed"}
    text = (root / "deploy" / "k8s-job-template.yaml").read_text()
    template = yaml.safe_load(text)
    assert set(re.findall(r"\{\{ (\w+) \}\}", text)) <= set(template["variables"]["properties"])
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"


def test_task_worker_route_waits_through_the_no_state_race(monkeypatch):
    """Prefect 3.8 can report a just-deferred task run as stateless; call() asks again, once it has one."""

    class Future:
        task_run_id = "t-1"

        def __init__(self):
            self.calls = 0

        def result(self, timeout=None):
            self.calls += 1
            if self.calls < 3:
                raise RuntimeError("Task run t-1 has no state which means it hasn't started yet.")
            return ("tokens", "images")

    class FakeTask:
        def __init__(self):
            self.future = Future()
            self.args = None

        def delay(self, *args):
            self.args = args
            return self.future

        def __call__(self, *args):
            raise AssertionError("the task-worker route must not run the task inline")

    monkeypatch.setattr(routing.time, "sleep", lambda s: None)
    monkeypatch.setenv(routing.ROUTE_ENV, "task-worker")
    fake = FakeTask()
    assert routing.call(fake, "prompt", 3) == ("tokens", "images")
    assert fake.args == ("prompt", 3) and fake.future.calls == 3

    class Broken(FakeTask):
        def delay(self, *args):
            future = Future()
            future.result = lambda timeout=None: (_ for _ in ()).throw(RuntimeError("worker exploded"))
            return future

    with pytest.raises(RuntimeError, match="worker exploded"):
        routing.call(Broken(), "prompt")


def test_worker_supervisor_restarts_after_exit_and_after_api_outage():
    """The task worker is restarted when it dies, and when the API comes back from an outage
    (Prefect's task worker does not resubscribe after a server restart)."""
    import sys
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    health = {"up": True}

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if health["up"] else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{httpd.server_address[1]}/api"
    sup = deploy.WorkerProcess([sys.executable, "-c", "import time; time.sleep(120)"], dict(os.environ),
                               api_url=api, health_every=0.2)
    sup._stop.wait = lambda t: sup._stop.is_set() or time.sleep(0.05)  # a fast supervision loop
    try:
        sup.start()
        first = sup.proc.pid

        def wait_for(cond, what):
            end = time.monotonic() + 20
            while not cond():
                assert time.monotonic() < end, what
                time.sleep(0.05)

        health["up"] = False
        time.sleep(0.6)
        assert sup.proc.pid == first  # down: nothing to resubscribe to yet
        health["up"] = True
        wait_for(lambda: sup.restarts == 1, "no restart after the API came back")
        assert sup.proc.pid != first
        sup.proc.kill()
        wait_for(lambda: sup.restarts == 2 and sup.proc.poll() is None, "no restart after exit")
    finally:
        sup.stop()
        httpd.shutdown()
        httpd.server_close()


def test_every_task_sent_to_the_worker_is_served_by_it():
    """A task run_stages routes through routing.call but the task worker does not serve would never
    run, and its flow run would wait forever."""
    import inspect
    import re

    from flows import pipeline

    source = inspect.getsource(pipeline.run_stages)
    routed = set(re.findall(r"routing\.call,\s*(\w+)", source)) | set(re.findall(r"routing\.call\((\w+)", source))
    assert {"generate_images", "rank_images", "describe_model"} <= routed
    served = {t.fn.__name__ for t in worker.model_tasks()}
    assert routed <= served, f"not served by the task worker: {routed - served}"


def test_serve_waits_for_a_late_api_then_gives_up_in_one_line(monkeypatch, caplog):
    """Services start in any order: the API that comes up 1.5 s late is waited for; one that never
    comes up ends in one error line after the configured wait."""
    import http.server
    import socket
    import threading
    import time

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    def start_late():
        time.sleep(1.5)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)

    started: list = []
    with temporary_settings({PREFECT_API_URL: url}):
        with pytest.raises(ConfigError, match=r"cannot reach the Prefect API .* after waiting 1 s"):
            deploy._require_api(wait=1)
        late = threading.Thread(target=start_late)
        late.start()
        caplog.set_level("INFO", logger="flows.deploy")
        t0 = time.monotonic()
        assert deploy._require_api(wait=30) == url
        assert 1.4 < time.monotonic() - t0 < 10
        assert "waiting for the Prefect API" in caplog.text
    late.join()
    started[0].shutdown()
