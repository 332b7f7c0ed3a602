"""``covercraft serve``: the Prefect deployments, the resident model worker and the image file server.

One process serves (``prefect.serve``):

- ``blog-to-images/<name>``: manual runs from the UI's Custom run form (typed parameters, see
  flows/pipeline.py), and runs started by the watcher and the HTTP service's publishing hook;
- ``watch-feed/<name>`` on the cron/interval of configs/deploy.yaml, when feeds are configured.

Before serving it creates the global concurrency limit when missing, starts the task worker that keeps
the model resident (flows/worker.py, restarted if it dies) and a read-only HTTP server on the output
folder so image artifacts display in the UI. Flow runs learn all of this from environment variables
(``prefect.serve`` starts each run as a child process with this process's environment).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows import artifacts, routing
from flows.recovery import RecoveryConfig, ensure_crashed_runs_automation
from flows.settings import ENV_PREFIX, ConfigError, _read_yaml, deep_merge

log = logging.getLogger(__name__)

_NAME = r"^[a-z0-9][a-z0-9-]*$"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeploymentNames(_Section):
    blog_to_images: str = Field("covercraft", pattern=_NAME)
    watch_feed: str = Field("covercraft", pattern=_NAME)
    tags: list[str] = ["covercraft"]


class ConcurrencyConfig(_Section):
    name: str = Field("covercraft-generation", min_length=1)
    limit: int = Field(1, ge=1, le=1024)
    slot_timeout: float = Field(3600.0, gt=0)


class WorkerConfig(_Section):
    limit: int = Field(1, ge=1, le=64)
    warm: bool = True
    # Where model-task results are written (PREFECT_LOCAL_STORAGE_PATH for the task worker); on a
    # work pool it must be the shared folder the flow runs read (prefect.yaml's env block).
    result_storage: Path | None = None


class FilesConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(4300, ge=0, le=65535)
    public_url: str | None = None


class FeedsConfig(_Section):
    urls: list[str] = []
    cron: str | None = "*/15 * * * *"
    interval_minutes: float | None = Field(None, gt=0)
    timezone: str = "UTC"
    state_file: Path = Path("covercraft-state/feeds.json")
    max_new_runs: int = Field(50, ge=1, le=1000)
    max_attempts: int = Field(3, ge=1, le=20)
    retry_backoff_minutes: float = Field(10.0, ge=0, le=10080)
    parameters: dict[str, Any] = {}

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) not in (5, 6):
            raise ValueError("a cron expression has 5 fields, e.g. '*/15 * * * *'")
        return value


class WorkPoolConfig(_Section):
    name: str = "covercraft-gpu"
    type: Literal["process", "kubernetes"] = "process"


class DeployConfig(_Section):
    deployments: DeploymentNames = DeploymentNames()
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    resident_model: Literal["task-worker", "inline"] = "task-worker"
    worker: WorkerConfig = WorkerConfig()
    files: FilesConfig = FilesConfig()
    feeds: FeedsConfig = FeedsConfig()
    work_pool: WorkPoolConfig = WorkPoolConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    api_wait: float = Field(120.0, ge=0, le=3600)

    @property
    def blog_deployment(self) -> str:
        return f"blog-to-images/{self.deployments.blog_to_images}"


def load_deploy_config(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> DeployConfig:
    """configs/deploy.yaml < ``path`` (only the keys it changes) < ``overrides``."""
    data = _read_yaml(resources.files("configs").joinpath("deploy.yaml").read_text(encoding="utf-8"),
                      "configs/deploy.yaml")
    origin = "configs/deploy.yaml"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"deploy config {p} does not exist")
        data = deep_merge(data, _read_yaml(p.read_text(encoding="utf-8"), str(p)))
        origin = str(p)
    data = deep_merge(data, overrides or {})
    try:
        return DeployConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(x) for x in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"unknown deploy config key '{key}' ({origin}); check the spelling against configs/deploy.yaml") from None
        raise ConfigError(f"invalid deploy config value for '{key}': {first['msg']} ({origin})") from None


# ---------------------------------------------------------------- deployments


def form_defaults(config_file: str | None = None) -> dict[str, Any]:
    """The run form's initial values: the settings these runs would use anyway.

    The flow's own defaults are None ("from the settings"), which the UI shows as an unset
    ``type | None`` toggle; prefilling the effective values gives a drop-down with the current
    style, the number of candidates, etc. (same settings layers as the runs: defaults, the
    config file, COVERCRAFT_* env of this process).
    """
    from flows.settings import load_settings

    settings = load_settings(config_file)
    out: dict[str, Any] = {
        "style": settings.prompt.style,
        "candidates": settings.sampling.candidates,
        "seed": settings.sampling.seed,
        "negative_words": list(settings.prompt.negative_words),
        "upscale": settings.output.upscale,
        "platforms": list(settings.output.platforms),
    }
    # Only values the form's enums accept (settings forgive case and dashes in style names).
    from flows.pipeline import _platform_names
    from nlp.prompt import STYLE_PRESETS

    if out["style"] not in STYLE_PRESETS:
        del out["style"]
    if not set(out["platforms"]) <= set(_platform_names()):
        del out["platforms"]
    if config_file:
        out["config_file"] = str(config_file)
    return out


def build_deployments(cfg: DeployConfig, config_file: str | None = None) -> list:
    """The RunnerDeployments to serve: blog-to-images always, watch-feed when feeds are configured."""
    from prefect.deployments.runner import EntrypointType

    from flows.feed import watch_feed
    from flows.pipeline import blog_to_images

    tags = list(cfg.deployments.tags)
    # Runs import flows.pipeline as a module (not by file path), so the objects they pickle for the
    # task worker (parameters, results) name the same modules in every process.
    module = EntrypointType.MODULE_PATH
    blog = blog_to_images.to_deployment(
        name=cfg.deployments.blog_to_images,
        entrypoint_type=module,
        tags=tags,
        description="A blog post in, ranked cover images out. Start a Custom run and fill in the source.",
        parameters=form_defaults(config_file),
    )
    out = [_closed(blog)]
    feeds = cfg.feeds
    if feeds.urls:
        from prefect.schedules import Cron, Interval

        if feeds.cron:
            schedule = Cron(feeds.cron, timezone=feeds.timezone)
        elif feeds.interval_minutes:
            schedule = Interval(timedelta(minutes=feeds.interval_minutes), timezone=feeds.timezone)
        else:
            raise ConfigError("feeds.urls is set but neither feeds.cron nor feeds.interval_minutes; set one of them")
        parameters = dict(feeds.parameters)
        if config_file:
            parameters.setdefault("config_file", config_file)
        out.append(_closed(watch_feed.to_deployment(
            name=cfg.deployments.watch_feed,
            entrypoint_type=module,
            tags=tags,
            description="Starts blog-to-images once per new or changed post of the configured feeds.",
            parameters={
                "feeds": list(feeds.urls),
                "state_file": str(feeds.state_file.expanduser().resolve()),
                "deployment": cfg.blog_deployment,
                "parameters": parameters,
                "max_new_runs": feeds.max_new_runs,
                "max_attempts": feeds.max_attempts,
                "retry_backoff_minutes": feeds.retry_backoff_minutes,
            },
            schedule=schedule,
        )))
    return out


def _closed(deployment):
    """The deployment with ``additionalProperties: false`` in its parameter schema, so the server
    refuses a run with an unknown parameter when it is created (it would crash when it starts)."""
    from prefect.utilities.callables import ParameterSchema
    from pydantic import ConfigDict

    class ClosedSchema(ParameterSchema):
        model_config = ConfigDict(extra="allow")

    schema = deployment._parameter_openapi_schema.model_dump(exclude_unset=True)
    deployment._parameter_openapi_schema = ClosedSchema(**schema, additionalProperties=False)
    return deployment


def ensure_concurrency_limit(name: str, limit: int) -> bool:
    """Create the global concurrency limit when missing (True when created); an existing one is kept."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            log.info("created global concurrency limit %r (limit %d)", name, limit)
            return True
        if existing.limit != limit:
            log.warning("concurrency limit %r exists with limit %d (config says %d); keeping %d",
                        name, existing.limit, limit, existing.limit)
        if not existing.active:
            log.warning("concurrency limit %r is inactive: generations are not limited", name)
        return False


# ---------------------------------------------------------------- the image file server


class _FilesHandler(SimpleHTTPRequestHandler):
    """Read-only files under /files/ (no directory listings, no other paths)."""

    prefix = "/files/"

    def translate_path(self, path: str) -> str:
        if not path.startswith(self.prefix):
            return ""
        return super().translate_path("/" + path[len(self.prefix):])

    def list_directory(self, path):
        self.send_error(404, "no listings")
        return None

    def send_head(self):
        if not self.path.startswith(self.prefix):
            self.send_error(404, "only /files/ is served")
            return None
        return super().send_head()

    def end_headers(self):
        # Finished folders never change (written under a temporary name, renamed when whole).
        self.send_header("Cache-Control", "public, max-age=86400")
        super().end_headers()

    def log_message(self, fmt, *args):
        log.debug("files: " + fmt, *args)


class FileServer:
    """Serves ``root`` read-only at ``http://host:port/files/`` from a daemon thread."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 4300, public_url: str | None = None):
        self.root = Path(root).resolve()
        handler = partial(_FilesHandler, directory=str(self.root))
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as err:
            raise ConfigError(f"cannot serve files on {host}:{port} ({err.strerror}); set files.port to a free port") from None
        bound = self.httpd.server_address[1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        self.url = (public_url or f"http://{shown}:{bound}/files").rstrip("/")
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="covercraft-files", daemon=True)

    def start(self) -> FileServer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ---------------------------------------------------------------- the task worker


class WorkerProcess:
    """``python -m flows.worker`` as a child process, restarted with back-off when it exits, and
    restarted when the Prefect API comes back after being unreachable: Prefect 3.8's task worker
    does not resubscribe after a server restart (a clean websocket close is not retried), so it
    would sit idle while flow runs wait for their generate tasks."""

    def __init__(self, cmd: list[str], env: dict[str, str], api_url: str | None = None,
                 health_every: float = 15.0):
        self.cmd, self.env, self.api_url, self.health_every = cmd, env, api_url, health_every
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="covercraft-worker", daemon=True)

    def start(self) -> WorkerProcess:
        self.proc = subprocess.Popen(self.cmd, env=self.env)
        self._thread.start()
        return self

    def _api_up(self) -> bool:
        import httpx

        try:
            return httpx.get(self.api_url.rstrip("/") + "/health", timeout=5).status_code < 500
        except httpx.HTTPError:
            return False

    def _restart(self, why: str) -> None:
        log.warning("restarting the model task worker: %s", why)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.restarts += 1
        self.proc = subprocess.Popen(self.cmd, env=self.env)

    def _supervise(self) -> None:
        delay, api_was_down, next_check = 2.0, False, time.monotonic() + self.health_every
        while not self._stop.wait(1.0):
            if self.api_url and time.monotonic() >= next_check:
                next_check = time.monotonic() + self.health_every
                up = self._api_up()
                if up and api_was_down:
                    self._restart("the Prefect API is reachable again (server restart)")
                api_was_down = not up
            if self.proc is None or self.proc.poll() is None:
                continue
            log.error("model task worker exited with %s; restarting in %.0fs", self.proc.returncode, delay)
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, 60.0)
            self._restart("it exited")

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---------------------------------------------------------------- serve


def _require_api(wait: float = 0.0) -> str:
    """The Prefect API URL, once the API answers.

    Services start in any order (systemd, compose): for up to ``wait`` seconds an unreachable API
    (or one still answering 5xx while it starts) is retried with a growing pause and one log line
    per try; after that, one error line says what to check.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ConfigError("PREFECT_API_URL is not set; start `prefect server start` and "
                          "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (or point it at your server)")
    deadline = time.monotonic() + wait
    pause, attempt = 1.0, 1
    while True:
        try:  # reachability only: a Prefect Cloud URL may answer 401 here without a key, that is fine
            resp = httpx.get(url.rstrip("/") + "/health", timeout=10)
            if resp.status_code < 500:
                return url
            problem = f"HTTP {resp.status_code}"
        except httpx.TransportError as err:
            problem = type(err).__name__
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f" after waiting {wait:g} s" if wait else ""
            raise ConfigError(f"cannot reach the Prefect API at {url} ({problem}){waited}; "
                              "is `prefect server start` running, and is PREFECT_API_URL right?")
        log.info("waiting for the Prefect API at %s (%s; try %d, next in %.0f s, giving up in %.0f s)",
                 url, problem, attempt, min(pause, left), left)
        time.sleep(min(pause, left))
        pause, attempt = min(pause * 2, 15.0), attempt + 1


def prepare(cfg: DeployConfig, config_file: str | None = None, start_worker: bool = True) -> dict[str, Any]:
    """Everything ``serve`` sets up before serving; returns handles to close (see ``shutdown``)."""
    from flows.settings import load_settings

    _require_api(cfg.api_wait)
    settings = load_settings(config_file)  # fail fast on a bad pipeline config
    out_dir = settings.output.dir.expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # Flow runs (child processes) and the task worker agree on these through the environment.
    os.environ[f"{ENV_PREFIX}OUTPUT__DIR"] = str(out_dir)
    os.environ[routing.LIMIT_ENV] = cfg.concurrency.name
    os.environ[routing.LIMIT_TIMEOUT_ENV] = str(cfg.concurrency.slot_timeout)
    ensure_concurrency_limit(cfg.concurrency.name, cfg.concurrency.limit)
    # Flow runs send heartbeats; the server marks a run whose heartbeats stop Crashed.
    os.environ.update(cfg.recovery.environment())
    ensure_crashed_runs_automation(cfg.recovery)

    handles: dict[str, Any] = {"output_dir": out_dir}
    if cfg.files.enabled:
        files = FileServer(out_dir, cfg.files.host, cfg.files.port, cfg.files.public_url).start()
        os.environ[artifacts.FILES_URL_ENV] = files.url
        os.environ[artifacts.FILES_ROOT_ENV] = str(out_dir)
        handles["files"] = files
        log.info("serving %s at %s", out_dir, files.url)

    os.environ[routing.ROUTE_ENV] = cfg.resident_model
    if cfg.resident_model == "task-worker" and start_worker:
        handles["worker"] = _task_worker(cfg, config_file)
    return handles


def _task_worker(cfg: DeployConfig, config_file: str | None, limit: int | None = None) -> WorkerProcess:
    """The resident model's task worker, supervised: restarted when it exits or when the Prefect
    API comes back after an outage."""
    if cfg.worker.result_storage is not None:
        os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(cfg.worker.result_storage.expanduser()))
    cmd = [sys.executable, "-m", "flows.worker", "--limit", str(limit or cfg.worker.limit)]
    if cfg.worker.warm:
        cmd.append("--warm")
    if config_file:
        cmd += ["--config", str(config_file)]
    return WorkerProcess(cmd, dict(os.environ), api_url=_require_api()).start()


def shutdown(handles: dict[str, Any]) -> None:
    if "worker" in handles:
        handles["worker"].stop()
    if "files" in handles:
        handles["files"].close()


def serve(cfg: DeployConfig, config_file: str | None = None, start_worker: bool = True,
          limit: int | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM pause nothing: schedules stay on the server)."""
    import signal

    import prefect

    def _stop(signum, frame):
        # SIGTERM (systemd, docker stop) takes the same clean path as Ctrl-C: the finally below
        # stops the task worker and the file server.
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    deployments = build_deployments(cfg, config_file)
    handles = prepare(cfg, config_file, start_worker)
    try:
        prefect.serve(*deployments, pause_on_shutdown=False, limit=limit)
    finally:
        shutdown(handles)


# ---------------------------------------------------------------- CLI


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = load_deploy_config(args.deploy_config, _cli_overrides(args))
    serve(cfg, args.config, start_worker=not args.no_worker, limit=args.limit)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    cfg = load_deploy_config(args.deploy_config)
    _require_api(cfg.api_wait)
    os.environ.setdefault(routing.LIMIT_ENV, cfg.concurrency.name)
    os.environ.setdefault(routing.LIMIT_TIMEOUT_ENV, str(cfg.concurrency.slot_timeout))
    for name, value in cfg.recovery.environment().items():
        os.environ.setdefault(name, value)
    ensure_concurrency_limit(cfg.concurrency.name, cfg.concurrency.limit)
    ensure_crashed_runs_automation(cfg.recovery)
    import signal

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    supervisor = _task_worker(cfg, args.config, args.limit)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        supervisor.stop()


def cmd_watch(args: argparse.Namespace) -> int:
    from flows.feed import watch_feed

    cfg = load_deploy_config(args.deploy_config)
    _require_api(cfg.api_wait)  # runs are created on the server that serves the blog-to-images deployment
    urls = list(args.feed or cfg.feeds.urls)
    if not urls:
        raise ConfigError("no feeds: pass --feed URL or set feeds.urls in the deploy config")
    result = watch_feed(feeds=urls, state_file=str(cfg.feeds.state_file.expanduser().resolve()),
                        deployment=cfg.blog_deployment, parameters=dict(cfg.feeds.parameters),
                        max_new_runs=cfg.feeds.max_new_runs, max_attempts=cfg.feeds.max_attempts,
                        retry_backoff_minutes=cfg.feeds.retry_backoff_minutes)
    print(f"watch-feed: {result}")
    return 0


def _cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if args.inline:
        out["resident_model"] = "inline"
    if args.files_port is not None:
        out["files"] = {"port": args.files_port}
    return out


def register(subparsers) -> None:
    """Add ``serve``, ``worker`` and ``watch`` to the covercraft CLI."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--deploy-config", help="YAML with the deploy keys to change (see configs/deploy.yaml)")
    common.add_argument("--config", help="pipeline settings YAML for the served runs (see configs/default.yaml)")

    srv = subparsers.add_parser("serve", parents=[common],
                                help="serve the Prefect deployments (blog-to-images, watch-feed)")
    srv.add_argument("--inline", action="store_true", help="no resident model: each run loads it itself")
    srv.add_argument("--no-worker", action="store_true",
                     help="route generation to task workers started elsewhere (covercraft worker)")
    srv.add_argument("--files-port", type=int, help="port of the image file server (files.port)")
    srv.add_argument("--limit", type=int, help="flow runs executed at once by this process")
    srv.set_defaults(func=cmd_serve)

    wrk = subparsers.add_parser("worker", parents=[common],
                                help="a Prefect task worker holding the model (one per GPU host)")
    wrk.add_argument("--limit", type=int, help="model tasks at once (worker.limit)")
    wrk.set_defaults(func=cmd_worker)

    wat = subparsers.add_parser("watch", parents=[common], help="one watch-feed tick now")
    wat.add_argument("--feed", action="append", help="feed or sitemap URL (repeatable; default feeds.urls)")
    wat.set_defaults(func=cmd_watch)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(prog="python -m flows.deploy")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
