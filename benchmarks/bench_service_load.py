"""Load on the images API: requests/s, p50/p95 latency and failures at 1, 8 and 32 clients.

    python benchmarks/bench_service_load.py                      # random-init tiny model, CPU
    python benchmarks/bench_service_load.py --model embedded --requests 64 --max-pending 16

The service runs in this process on loopback (uvicorn in a thread, an ephemeral port); each
client is a thread with its own ``openai.OpenAI`` (no retries, so a 429 is counted, not hidden).
Every level is bounded by a request count and a time limit. The queue bound (``--max-pending``)
is set below the largest level so the 32-client run shows the service refusing cleanly: every
refusal must be a 429 with a Retry-After header and OpenAI's error body; anything else is a
failure. Below the bound there must be no failures at all.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

KEY = "bench-key"


@dataclass
class Level:
    clients: int
    latencies: list[float] = field(default_factory=list)
    refused: int = 0  # clean 429s
    failures: list[str] = field(default_factory=list)
    wall: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_level(base_url: str, clients: int, total: int, time_limit: float, size: str) -> Level:
    import openai

    level = Level(clients)
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + time_limit

    def take() -> bool:
        nonlocal issued
        with lock:
            if issued >= total or time.monotonic() > deadline:
                return False
            issued += 1
            return True

    def client_loop(i: int) -> None:
        client = openai.OpenAI(base_url=base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        while take():
            start = time.perf_counter()
            try:
                client.images.generate(prompt=f"a lighthouse on a cliff, client {i}", n=1, size=size)
                took = time.perf_counter() - start
                with lock:
                    level.latencies.append(took)
            except openai.RateLimitError as err:
                clean = (err.status_code == 429 and err.response.headers.get("retry-after", "").isdigit()
                         and isinstance(err.body, dict) and err.body.get("code") == "rate_limit_exceeded")
                with lock:
                    if clean:
                        level.refused += 1
                    else:
                        level.failures.append(f"unclean 429: {err.response.headers} {err.body}")
                # A polite client honours Retry-After (capped so a level stays short).
                retry = err.response.headers.get("retry-after", "1")
                time.sleep(min(float(retry) if retry.isdigit() else 1.0, 2.0))
            except Exception as err:  # noqa: BLE001 - every other outcome is a failure
                with lock:
                    level.failures.append(f"{type(err).__name__}: {err}")

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(time_limit + 180)
    level.wall = time.perf_counter() - start
    return level


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="random-tiny", help="model.source: random-tiny, embedded or a folder")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=48, help="requests per level (at most)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per level (at most)")
    parser.add_argument("--max-pending", type=int, default=16, help="queue bound (429 past it)")
    parser.add_argument("--max-batch", type=int, default=8, help="rows per sampling call")
    parser.add_argument("--fixed-batch", action="store_true",
                        help="pad every call to --max-batch rows (default: next power of two)")
    parser.add_argument("--size", default="256x256", choices=["256x256", "512x512", "1024x1024"])
    parser.add_argument("--json", action="store_true", help="also print one JSON line per level")
    args = parser.parse_args(argv)

    from flows.model import get_generator
    from flows.service import ServiceSettings, create_app
    from flows.service.testing import running
    from flows.settings import ModelSettings, load_settings

    levels = [int(x) for x in args.levels.split(",")]
    service = ServiceSettings.model_validate({
        "queue": {"max_pending": args.max_pending, "max_batch": args.max_batch, "fixed_batch": args.fixed_batch,
                  "batch_wait_ms": 10, "request_timeout": 120},
    })
    t0 = time.perf_counter()
    generator = get_generator(ModelSettings(source=args.model))
    app = create_app(service, load_settings(), generator=generator, environ={"COVERCRAFT_API_KEYS": KEY},
                     warm_up=True)
    print(f"model {generator.info.name} ({generator.info.variant}); queue bound {args.max_pending}, "
          f"batches of up to {args.max_batch} rows ({'fixed' if args.fixed_batch else 'power-of-two'} "
          f"padding); size {args.size}", file=sys.stderr)
    results = []
    with running(app) as srv:
        print(f"service up in {time.perf_counter() - t0:.1f}s at {srv.base_url}", file=sys.stderr)
        run_level(srv.base_url, 1, 2, 60, args.size)  # first requests: PNG encoder, URL store, client
        state = app.state.covercraft
        print(f"{'clients':>7} {'ok':>5} {'429':>5} {'fail':>5} {'req/s':>7} {'p50 s':>7} {'p95 s':>7} "
              f"{'batches':>7} {'rows/batch':>10}")
        for clients in levels:
            b0, j0 = state.queue.batches_run, state.queue.jobs_run
            lv = run_level(srv.base_url, clients, args.requests, args.time_limit, args.size)
            batches = state.queue.batches_run - b0
            per_batch = (state.queue.jobs_run - j0) / max(batches, 1)
            rps = lv.ok / lv.wall if lv.wall else float("nan")
            print(f"{clients:>7} {lv.ok:>5} {lv.refused:>5} {len(lv.failures):>5} {rps:>7.2f} "
                  f"{lv.pct(0.5):>7.3f} {lv.pct(0.95):>7.3f} {batches:>7} {per_batch:>10.2f}")
            for f in lv.failures[:3]:
                print(f"        failure: {f}")
            results.append({"clients": clients, "ok": lv.ok, "refused_429": lv.refused,
                            "failures": len(lv.failures), "requests_per_s": round(rps, 3),
                            "p50_s": round(lv.pct(0.5), 4), "p95_s": round(lv.pct(0.95), 4),
                            "mean_s": round(statistics.fmean(lv.latencies), 4) if lv.latencies else None,
                            "batches": batches, "requests_per_batch": round(per_batch, 2),
                            "wall_s": round(lv.wall, 2)})
    if args.json:
        for r in results:
            print(json.dumps(r))
    bad = [r for r in results if r["failures"]] + [
        r for r in results if r["clients"] <= args.max_pending and r["refused_429"]]
    if bad:
        print("unexpected: failures, or 429s at or below the queue bound", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
