"""Run the service on loopback in a background thread (tests, benchmarks, demos).

    with running(app) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY)

Leaving the block asks uvicorn to shut down the way SIGTERM does (stop accepting, wait for
in-flight requests, run the app's shutdown) and waits for it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn


@dataclass
class RunningServer:
    server: uvicorn.Server
    thread: threading.Thread
    base_url: str

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


@contextmanager
def running(app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 120.0,
            graceful_timeout: int | None = 30) -> Iterator[RunningServer]:
    """Serve ``app`` on ``host`` (an ephemeral port by default) until the block exits."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=graceful_timeout)
    server = uvicorn.Server(config)
    # uvicorn installs signal handlers only on the main thread, so the caller keeps its own.
    thread = threading.Thread(target=server.run, name="covercraft-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the service failed to start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the service did not start within {startup_timeout:g} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    handle = RunningServer(server, thread, f"http://{bound[0]}:{bound[1]}")
    try:
        yield handle
    finally:
        handle.stop()
