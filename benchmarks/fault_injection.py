"""Fault injection on a real Prefect server: kill `covercraft serve` mid-run, restart it, count what is lost.

    python benchmarks/fault_injection.py [--posts 3] [--fault kill|term] [--timeout 900]

It starts, in a scratch folder, ``prefect server start`` (its own SQLite database), a loopback web
server with a feed of copies of the bundled example posts, and ``covercraft serve`` with the
embedded model. The feed watcher (``covercraft watch``) starts one run per post. When the first run
is generating, the fault hits:

- ``kill``: ``kill -9`` of ``serve`` and every process it started (a host or container crash);
- ``term``: ``SIGTERM`` to ``serve`` alone (a stop or restart by systemd or an operator).

Then ``serve`` starts again and the watcher ticks until every post is done or given up. It prints
posts in, images out, how long the interrupted run took to leave Running, runs left stuck
(not finished at the end), generation slots still taken, and duplicated posts (two completed runs or
two output folders for one post). Exit status 0 when nothing is stuck, leaked or duplicated and every
post has images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [ROOT / "examples" / n for n in ("remote-work-rituals.md", "solar-rooftop-guide.html", "red-circle-brand.md")]
DEPLOYMENT = "blog-to-images/covercraft"
LIMIT = "covercraft-generation"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def serve_posts(folder: Path, n: int) -> tuple[ThreadingHTTPServer, str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    items = []
    for i in range(n):
        src = EXAMPLES[i % len(EXAMPLES)]
        name = f"post-{i + 1}{src.suffix}"
        text = src.read_text(encoding="utf-8")
        if i >= len(EXAMPLES):  # a different version of the text: another post, not a repeat
            text += f"\n\nPost {i + 1} of the fault-injection feed.\n"
        (folder / name).write_text(text, encoding="utf-8")
        items.append(f"<item><title>Post {i + 1}</title><link>{base}/{name}</link>"
                     f"<description>post {i + 1}</description></item>")
    (folder / "feed.xml").write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
                                     f'{"".join(items)}</channel></rss>', encoding="utf-8")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), partial(Quiet, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"{base}/feed.xml"


class Lab:
    def __init__(self, work: Path, posts: int):
        self.work = work
        self.api_port = free_port()
        self.api = f"http://127.0.0.1:{self.api_port}/api"
        self.env = dict(os.environ, PREFECT_HOME=str(work / "prefect-home"), PREFECT_API_URL=self.api,
                        PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOCAL_STORAGE_PATH=str(work / "results"),
                        COVERCRAFT_FETCH__ALLOW_PRIVATE="true", PYTHONPATH=str(ROOT))
        os.environ.update({k: self.env[k] for k in ("PREFECT_HOME", "PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED")})
        (work / "site").mkdir()
        self.site, self.feed = serve_posts(work / "site", posts)
        self.out = work / "out"
        (work / "pipeline.yaml").write_text(f"output:\n  dir: {self.out}\nsampling:\n  candidates: 2\n")
        (work / "deploy.yaml").write_text(
            "api_wait: 60\n"
            f"concurrency: {{name: {LIMIT}, limit: 1, slot_timeout: 900}}\n"
            "recovery: {heartbeat_seconds: 30, crash_after_seconds: 75, slot_lease_seconds: 60}\n"
            "files: {enabled: false}\n"
            f"feeds: {{state_file: {work / 'feeds.json'}, max_attempts: 3, retry_backoff_minutes: 0}}\n")
        self.server = self.serve = None
        self.serve_count = 0

    def start_server(self) -> None:
        log = open(self.work / "prefect-server.log", "w")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self.api_port)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.api + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise SystemExit("prefect server did not come up in 180 s; see prefect-server.log")

    def start_serve(self) -> None:
        self.serve_count += 1
        log = open(self.work / f"serve-{self.serve_count}.log", "w")
        self.serve = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve", "--deploy-config", str(self.work / "deploy.yaml"),
             "--config", str(self.work / "pipeline.yaml")],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)

    def watch(self) -> None:
        subprocess.run([sys.executable, "-m", "flows.cli", "watch", "--deploy-config", str(self.work / "deploy.yaml"),
                        "--config", str(self.work / "pipeline.yaml"), "--feed", self.feed],
                       env=self.env, cwd=ROOT, capture_output=True, timeout=300)

    def fault(self, kind: str) -> None:
        if kind == "kill":
            for pid in [self.serve.pid, *descendants(self.serve.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        else:
            self.serve.send_signal(signal.SIGTERM)
        try:
            self.serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.serve.kill()

    def stop(self) -> None:
        for proc in (self.serve, self.server):
            if proc is not None and proc.poll() is None:
                for pid in [*descendants(proc.pid), proc.pid]:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        self.site.shutdown()


def runs():
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return [r for r in client.read_flow_runs(limit=200) if r.name and r.parameters.get("source")]


def active_slots() -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(LIMIT).active_slots


def wait_for(check, seconds: float, step: float = 1.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=3)
    ap.add_argument("--fault", choices=["kill", "term"], default="kill")
    ap.add_argument("--timeout", type=float, default=900, help="seconds for the whole experiment")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, outputs)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="covercraft-faults-"))
    lab = Lab(work, args.posts)
    t_start = time.monotonic()
    try:
        lab.start_server()
        lab.start_serve()
        if not wait_for(lambda: _deployment_ready(), 180, 2):
            raise SystemExit(f"serve did not register {DEPLOYMENT} in 180 s; see {work}/serve-1.log")
        lab.watch()
        running = wait_for(lambda: [r for r in runs() if r.state_type.value == "RUNNING"], 300, 0.5)
        if not running:
            raise SystemExit("no run started within 300 s; see the serve log")
        victim = running[0]
        time.sleep(4)  # into its generation
        t_fault = time.monotonic()
        lab.fault(args.fault)
        print(f"fault: {args.fault} of serve {time.monotonic() - t_start:.0f} s in, during run {victim.name}")
        lab.start_serve()
        t_restart = time.monotonic()

        def left_running():
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                state = client.read_flow_run(victim.id).state
            return state if state.type.value not in ("RUNNING", "PENDING") else None

        deadline = t_start + args.timeout
        left = None
        while time.monotonic() < deadline:
            left = left or (left_running() and time.monotonic())
            lab.watch()
            posts = json.loads((work / "feeds.json").read_text())["posts"] if (work / "feeds.json").exists() else {}
            if posts and all(p["status"] in ("done", "failed") for p in posts.values()) and left:
                break
            time.sleep(5)
        # Let the lease repossessor catch up before counting slots.
        wait_for(lambda: active_slots() == 0, 120, 5)
        final = runs()
        posts = json.loads((work / "feeds.json").read_text())["posts"]
        completed: dict[str, int] = {}
        for r in final:
            if r.state_type.value == "COMPLETED":
                completed[r.parameters["source"]] = completed.get(r.parameters["source"], 0) + 1
        folders = sorted(p.name for p in lab.out.iterdir() if p.is_dir()) if lab.out.exists() else []
        with_images = [f for f in folders if any((lab.out / f).glob("candidate-*.png"))]
        stuck = [r for r in final if r.state_type.value in ("RUNNING", "PENDING", "SCHEDULED", "PAUSED")]
        dup_runs = sum(1 for c in completed.values() if c > 1)
        dup_folders = sum(1 for f in folders if f.rsplit("-", 1)[-1].isdigit() and f.rsplit("-", 1)[0] in folders)
        slots = active_slots()
        print(f"posts in: {len(posts)}; images out: {len(with_images)} posts "
              f"({sum(1 for p in posts.values() if p['status'] == 'done')} done, "
              f"{sum(1 for p in posts.values() if p['status'] == 'failed')} given up)")
        print(f"interrupted run: left Running {left - t_fault:.0f} s after the fault "
              f"({left - t_restart:.0f} s after the restart)" if left else
              "interrupted run: still Running at the end")
        print(f"runs: {len(final)} in all; stuck (not finished): {len(stuck)}; "
              f"by state: {_count(r.state_type.value for r in final)}")
        print(f"generation slots still taken: {slots}")
        print(f"duplicates: {dup_runs} posts with two completed runs, {dup_folders} repeated output folders")
        print(f"total: {time.monotonic() - t_start:.0f} s; scratch folder {work}")
        ok = not stuck and slots == 0 and not dup_runs and not dup_folders and len(with_images) == len(posts)
        return 0 if ok else 1
    finally:
        lab.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _deployment_ready() -> bool:
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(DEPLOYMENT)
        return True
    except Exception:
        return False


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


if __name__ == "__main__":
    raise SystemExit(main())
