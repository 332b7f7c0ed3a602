"""First-run vs second-run generation latency of served blog-to-images runs (the resident model).

What it does, end to end, the way production runs it:

1. starts a Prefect server (``prefect server start`` in a temporary PREFECT_HOME), or uses --api-url;
2. starts ``covercraft serve`` with a throw-away deploy config (route: task-worker or inline);
3. starts N runs of the deployment one after another, as the UI's Custom run does, waits for each;
4. prints each run's ``generate`` and ``rank`` stage times from its manifest, and the flow run's
   wall time (each served run is a fresh process, so the inline route loads and compiles each time).

    python benchmarks/bench_resident.py                      # task worker, 3 runs, default model
    python benchmarks/bench_resident.py --route inline       # the baseline: model loaded per run
    python benchmarks/bench_resident.py --keep               # leave server + serve up (UI checks)

The model is whatever the pipeline settings say (configs/default.yaml: the embedded model, or a
random tiny model when the install has none); pass --config for another. Numbers are measured,
never assumed; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def start_server(home: Path, port: int, log) -> subprocess.Popen:
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_API_URL=f"http://127.0.0.1:{port}/api")
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--route", choices=["task-worker", "inline"], default="task-worker")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--source", default=str(ROOT / "examples" / "red-circle-brand.md"))
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--config", help="pipeline settings YAML (model section etc.)")
    ap.add_argument("--api-url", help="use this Prefect API instead of starting a server")
    ap.add_argument("--warm", action="store_true", help="task worker loads the model before the first run")
    ap.add_argument("--keep", action="store_true", help="leave the server and serve running; print their URLs")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="covercraft-bench-"))
    out_dir = work / "out"
    log = open(work / "bench.log", "w")
    procs: list[subprocess.Popen] = []
    try:
        api = args.api_url
        if not api:
            port = free_port()
            procs.append(start_server(work / "prefect-home", port, log))
            api = f"http://127.0.0.1:{port}/api"
            t0 = time.perf_counter()
            wait_http(f"{api}/health", 300, procs[-1])
            print(f"prefect server up in {time.perf_counter() - t0:.1f}s: {api.removesuffix('/api')}")
        name = f"bench-{args.route}"
        files_port = free_port()
        (work / "deploy.yaml").write_text(json.dumps({
            "deployments": {"blog_to_images": name},
            "resident_model": args.route,
            "worker": {"limit": 1, "warm": bool(args.warm)},
            "files": {"port": files_port},
            "feeds": {"urls": []},
        }))
        env = dict(os.environ, PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   COVERCRAFT_OUTPUT__DIR=str(out_dir), PREFECT_HOME=str(work / "client-home"),
                   PREFECT_LOCAL_STORAGE_PATH=str(work / "results"))
        cmd = [sys.executable, "-m", "flows.cli", "serve", "--deploy-config", str(work / "deploy.yaml")]
        if args.config:
            cmd += ["--config", args.config]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True))
        os.environ["PREFECT_API_URL"] = api
        from prefect.client.orchestration import get_client

        deployment = f"blog-to-images/{name}"
        with get_client(sync_client=True) as client:
            end = time.monotonic() + 300
            while True:
                try:
                    dep = client.read_deployment_by_name(deployment)
                    break
                except Exception:
                    if procs[-1].poll() is not None or time.monotonic() > end:
                        raise RuntimeError(f"covercraft serve did not come up; see {work / 'bench.log'}") from None
                    time.sleep(1)
            rows = []
            for i in range(1, args.runs + 1):
                before = set(out_dir.iterdir()) if out_dir.exists() else set()
                start = time.perf_counter()
                run = client.create_flow_run_from_deployment(
                    dep.id, parameters={"source": args.source, "candidates": args.candidates, "seed": i})
                while True:
                    state = client.read_flow_run(run.id).state
                    if state and state.is_final():
                        break
                    if time.perf_counter() - start > args.timeout:
                        raise TimeoutError(f"run {i} not finished after {args.timeout}s (state {state.name})")
                    time.sleep(0.5)
                wall = time.perf_counter() - start
                if not state.is_completed():
                    raise RuntimeError(f"run {i} ended {state.name}: {state.message}; see {work / 'bench.log'}")
                (folder,) = set(out_dir.iterdir()) - before
                manifest = json.loads((folder / "manifest.json").read_text())
                t = manifest["timings"]
                rows.append((i, t["generate"], t.get("rank", 0.0), wall, manifest["model"]["name"]))
                print(f"run {i}: generate {t['generate']:.2f}s  rank {t.get('rank', 0):.2f}s  "
                      f"flow run wall {wall:.2f}s  ({manifest['model']['name']}, {folder.name})", flush=True)
        print(f"\nroute={args.route} warm={args.warm} candidates={args.candidates} model={rows[0][4]}")
        print("run  generate_s  rank_s  flow_run_wall_s")
        for i, gen, rank, wall, _ in rows:
            print(f"{i:>3}  {gen:>10.2f}  {rank:>6.2f}  {wall:>15.2f}")
        if len(rows) > 1:
            later = sorted(r[1] for r in rows[1:])[len(rows[1:]) // 2]
            print(f"first-run generate / median later-run generate = {rows[0][1]:.2f}s / {later:.2f}s "
                  f"= {rows[0][1] / max(later, 1e-9):.1f}x")
        if args.keep:
            print(f"\nkept: UI {api.removesuffix('/api')}  files http://127.0.0.1:{files_port}/files  "
                  f"log {work / 'bench.log'}  pids {[p.pid for p in procs]}")
            procs.clear()
        return 0
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    sys.exit(main())
