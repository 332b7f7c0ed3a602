"""``covercraft``: the command line. Thin: parse, build settings, call a flow or a core function.

Exit codes: 0 done, 2 bad input or configuration (one line on stderr says what and how to fix it),
1 an unexpected failure (with a traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

# Before Prefect is imported: no analytics, and no server of ours unless the user configured one
# (Prefect then runs the flow in its local ephemeral mode).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The ephemeral server needs more than Prefect's default 20 s to start on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

log = logging.getLogger("covercraft")


class TerminalBar:
    """A one-line progress bar on stderr (plain log lines when stderr is not a terminal)."""

    def __init__(self, label: str, stream=sys.stderr, width: int = 30):
        self.label, self.stream, self.width = label, stream, width
        self.tty = stream.isatty()
        self.start = time.perf_counter()
        self.last_pct = -1

    def __call__(self, done: int, total: int) -> None:
        frac = done / max(total, 1)
        if self.tty:
            filled = int(self.width * frac)
            bar = "#" * filled + "." * (self.width - filled)
            rate = done / max(time.perf_counter() - self.start, 1e-9)
            self.stream.write(f"\r  {self.label} [{bar}] {done}/{total} ({rate:.0f} tok/s)")
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
        else:
            pct = int(100 * frac) // 25 * 25
            if pct != self.last_pct:
                self.last_pct = pct
                self.stream.write(f"  {self.label}: {done}/{total} tokens\n")
                self.stream.flush()


def _user_errors() -> tuple[type[BaseException], ...]:
    from dalle_core.checkpoints import CheckpointError
    from flows.output import OutputError
    from flows.settings import ConfigError
    from nlp.errors import NlpError

    return (ConfigError, NlpError, OutputError, CheckpointError)


def _hide_user_error_tracebacks() -> None:
    """Bad input is reported in one line by ``main``: keep Prefect's console free of its traceback.

    Only terminal handlers are filtered; the Prefect API still receives the full record.
    """
    from prefect.logging.handlers import APILogHandler

    errors = _user_errors()

    class _Strip(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], errors):
                record.exc_info = record.exc_text = None
            return True

    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, APILogHandler):
                handler.addFilter(_Strip())


def _overrides(args: argparse.Namespace) -> dict:
    """CLI flags → nested settings overrides (only flags the user gave)."""
    out: dict = {}

    def put(section: str, key: str, value) -> None:
        if value is not None:
            out.setdefault(section, {})[key] = value

    put("output", "dir", args.out)
    put("sampling", "seed", args.seed)
    put("sampling", "candidates", args.candidates)
    put("sampling", "condition_scale", args.condition_scale)
    put("model", "source", args.model)
    put("prompt", "style", args.style)
    put("llm", "base_url", args.llm_url)
    put("llm", "model", args.llm_model)
    if args.negative:
        put("prompt", "negative_words", [w.strip() for w in args.negative.split(",") if w.strip()])
    if args.upscale:
        put("output", "upscale", True)
    if args.platforms:
        put("output", "platforms", [p.strip() for p in args.platforms.split(",") if p.strip()])
    return out


def _summary(manifest: dict) -> str:
    lines = [
        "",
        f"Done: {manifest['title']!r}",
        f"  text ({manifest['article']['extractor']}): {manifest['article']['characters']} characters",
        f"  topics ({manifest['topics']['extractor']}): "
        + ", ".join(t["phrase"] for t in manifest["topics"]["merged"]),
        f"  prompt: {manifest['prompt']}",
        f"  model: {manifest['model']['name']}" + (" (random init)" if manifest["model"]["random_init"] else ""),
    ]
    best = manifest["candidates"][0]
    score = f" (score {best['score']:.2f})" if best["score"] is not None else ""
    lines.append(f"  {len(manifest['candidates'])} images, best {best['file']}{score}")
    total = sum(manifest["timings"].values())
    lines.append(f"  time: {total:.1f}s (" + ", ".join(f"{k} {v:.1f}s" for k, v in manifest["timings"].items()) + ")")
    lines.append(f"  output: {manifest['output_dir']}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from flows.settings import load_settings

    overrides = _overrides(args)
    settings = load_settings(args.config, overrides)  # fail fast on bad config, before Prefect starts
    source = args.source
    if "://" not in source:
        path = Path(source).expanduser()
        if not path.exists():
            raise _missing_file(path)
        source = str(path.resolve())

    from flows import progress
    from flows.output import check_writable
    from flows.pipeline import blog_to_images

    check_writable(settings.output.dir)
    _hide_user_error_tracebacks()
    print(f"covercraft: {source} -> {settings.output.dir}", file=sys.stderr)
    with progress.reporter(TerminalBar):
        manifest = blog_to_images(source, overrides=overrides, config_file=args.config)
    print(_summary(manifest))
    return 0


def _missing_file(path: Path):
    from nlp.errors import FetchError

    return FetchError(f"file {path} does not exist; give an http(s) URL or the path of an HTML or Markdown file")


def cmd_styles(args: argparse.Namespace) -> int:
    from flows.settings import load_settings
    from nlp.prompt import STYLE_PRESETS

    default = load_settings().prompt.style
    for name, preset in STYLE_PRESETS.items():
        mark = " (default)" if name == default else ""
        print(f"{name + mark:26s} {preset.description}")
        print(f"{'':26s} adds: {preset.suffix or 'nothing'}" + ("" if preset.context else "; no platform words"))
    return 0


# Training commands live in dalle_core.train; the CLI hands their arguments straight through.
TRAIN_COMMANDS = {
    "train-embedded": ("dalle_core.train.embedded", "train the embedded model from scratch (resumable)"),
    "finetune": ("dalle_core.train.finetune", "fine-tune a DalleBart on your caption-image pairs"),
    "eval": ("dalle_core.train.evaluate", "score a model on the held-out shapes prompts"),
}


def run_train_command(name: str, argv: list[str]) -> int:
    import importlib

    return importlib.import_module(TRAIN_COMMANDS[name][0]).main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covercraft",
        description="Self-hosted cover and social images for blog posts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="a blog post (URL or file) in, ranked images out")
    run.add_argument("source", help="http(s) URL, or a local .html/.md file")
    run.add_argument("--config", help="YAML file with settings to change (see configs/default.yaml)")
    run.add_argument("--out", help="output folder (default: output.dir, covercraft-output)")
    run.add_argument("--seed", type=int)
    run.add_argument("--candidates", type=int, help="number of images to generate")
    run.add_argument("--condition-scale", type=float)
    run.add_argument("--model", help="'embedded', 'random-tiny', or a folder with dalle/ vqgan/ clip/")
    run.add_argument("--style", help="style preset (covercraft styles)")
    run.add_argument("--negative", help="comma-separated words to steer away from")
    run.add_argument("--llm-url", help="OpenAI-compatible endpoint for topics and prompts (key: OPENAI_API_KEY)")
    run.add_argument("--llm-model", help="model name at that endpoint")
    run.add_argument("--upscale", action="store_true", help="x4 upscale the cover")
    run.add_argument("--platforms", help="comma-separated platform presets of configs/platforms.yaml "
                     "(blog, linkedin, x, instagram-square, …; aliases og, twitter, instagram) or all")
    run.set_defaults(func=cmd_run)

    styles = sub.add_parser("styles", help="list the style presets")
    styles.set_defaults(func=cmd_styles)
    for name, (_, help_text) in TRAIN_COMMANDS.items():
        train = sub.add_parser(name, help=help_text, add_help=False)
        train.add_argument("args", nargs=argparse.REMAINDER, help=f"see covercraft {name} --help")
    from flows import deploy  # serve, worker, watch (Prefect deployments)
    deploy.register(sub)
    from flows.service.cli import register as register_api
    register_api(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TRAIN_COMMANDS:  # their own parsers, --help included
        return run_train_command(argv[0], argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not args.verbose:  # every Prefect API call is an INFO line from httpx otherwise
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("covercraft: interrupted; nothing was written for the unfinished post", file=sys.stderr)
        return 130
    except _user_errors() as err:
        print(f"covercraft: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
