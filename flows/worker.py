"""The resident model: a Prefect task worker that serves the model-touching tasks of blog-to-images.

``flow.serve()`` (and every process or Kubernetes worker) runs each flow run in a fresh process, so a
model loaded inside the flow would be loaded and compiled again on every run. Instead the tasks that
need the model — ``generate`` (sample + decode), ``rank`` (CLIP), ``render`` (upscale, per-platform
outpainting) and ``model-info`` — are served by a
long-lived task worker (``covercraft worker``, started by ``covercraft serve``). The flow submits them
through ``flows.routing.call`` and waits for the result; the worker keeps one ``Generator`` per model
settings (``flows.model.get_generator``), so only its first run pays loading and compilation.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def model_tasks() -> list:
    from flows import pipeline

    # Every task run_stages sends through call(); tests/test_deploy.py checks none is missing
    # (a missing one is never picked up and its flow run waits forever).
    return [pipeline.generate_images, pipeline.rank_images, pipeline.render_outputs, pipeline.describe_model]


def serve_worker(limit: int = 1, warm: Any = None) -> None:
    """Serve the model tasks until interrupted. ``limit``: tasks this worker runs at once (one per GPU).

    ``warm``: ``ModelSettings`` to load before the first task arrives (None loads on first use).
    """
    from prefect.task_worker import serve

    if warm is not None:
        from flows.model import get_generator

        log.info("loading the model before serving: %s", warm)
        get_generator(warm)
    serve(*model_tasks(), limit=limit)


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.worker [--limit N] [--warm]``: what ``covercraft serve`` starts."""
    import argparse

    parser = argparse.ArgumentParser(prog="covercraft worker", description=main.__doc__)
    parser.add_argument("--limit", type=int, default=1, help="model tasks run at once (default 1)")
    parser.add_argument("--config", help="settings file (model section) to load before serving")
    parser.add_argument("--warm", action="store_true", help="load the model now, not on the first task")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warm = None
    if args.warm:
        from flows.settings import load_settings

        warm = load_settings(args.config).model
    serve_worker(args.limit, warm)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
