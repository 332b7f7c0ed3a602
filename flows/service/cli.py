"""``covercraft api``: serve the images API and the publishing hook with uvicorn.

``register(subparsers)`` adds the subcommand to the main CLI (flows/cli.py).
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger(__name__)


def _service_overrides(args: argparse.Namespace) -> dict:
    out: dict = {}
    for key in ("host", "port", "api_keys_env", "public_url"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    if args.no_auth:
        out["require_auth"] = False
    if args.max_pending is not None:
        out.setdefault("queue", {})["max_pending"] = args.max_pending
    if args.max_batch is not None:
        out.setdefault("queue", {})["max_batch"] = args.max_batch
    return out


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from flows.service.app import create_app
    from flows.service.settings import load_service_config

    pipeline_overrides = {"model": {"source": args.model}} if args.model else None
    service, settings = load_service_config(args.config, _service_overrides(args))
    if pipeline_overrides:
        settings = settings.model_copy(update={"model": settings.model.model_copy(update=pipeline_overrides["model"])})
    app = create_app(service, settings)  # ConfigError (no keys...) surfaces as a one-line error
    print(f"covercraft api: http://{service.host}:{service.port}/v1 (docs at /docs); Ctrl-C stops "
          "after in-flight requests finish", file=sys.stderr)
    uvicorn.run(
        app,
        host=service.host,
        port=service.port,
        log_level="debug" if args.verbose else "info",
        timeout_graceful_shutdown=int(service.shutdown_timeout) or None,
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``api`` to the main CLI's subcommands."""
    api = subparsers.add_parser(
        "api",
        help="serve the OpenAI-compatible images API and the publishing hook",
        description="Serve /v1/images/{generations,variations,edits}, /v1/models, /v1/hooks/publish "
        "and /health. Clients send 'Authorization: Bearer KEY' with a key from the variable "
        "named by --api-key-env (default COVERCRAFT_API_KEYS, comma-separated keys).",
    )
    api.add_argument("--config", help="YAML with a 'service:' section and/or pipeline sections "
                     "(see configs/service.yaml and configs/default.yaml)")
    api.add_argument("--host", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default 8000)")
    api.add_argument("--api-key-env", dest="api_keys_env", metavar="NAME",
                     help="environment variable holding the accepted API keys")
    api.add_argument("--no-auth", action="store_true", help="serve without API keys (local experiments)")
    api.add_argument("--public-url", help="base of returned image URLs, e.g. https://img.example.com")
    api.add_argument("--model", help="'embedded', 'random-tiny', or a folder with dalle/ vqgan/ clip/")
    api.add_argument("--max-pending", type=int, help="queue bound; more concurrent requests get 429")
    api.add_argument("--max-batch", type=int, help="image rows sampled together")
    api.set_defaults(func=cmd_api)
    return api
