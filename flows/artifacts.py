"""Prefect artifacts of a blog-to-images run: a markdown summary, a candidates table, image artifacts
and a progress artifact updated while image tokens are sampled.

Images display in the Prefect UI only through URLs the browser can load, so they are served over
HTTP: ``covercraft serve`` starts a small file server on the output folder and exports
``COVERCRAFT_FILES_URL`` (its base URL) and ``COVERCRAFT_FILES_ROOT`` (the folder it serves) to its
flow runs. Without them (``covercraft run``) the summary lists local paths and no image artifacts
are made. Artifacts are a view: a failure to publish one is logged and never fails the run.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

FILES_URL_ENV = "COVERCRAFT_FILES_URL"
FILES_ROOT_ENV = "COVERCRAFT_FILES_ROOT"

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int], None]


def artifact_key(*parts: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]+", "-", text)).strip("-")[:100] or "covercraft"


def file_url(path: str | os.PathLike, environ: dict[str, str] | None = None) -> str | None:
    """The URL of a file under the served output folder, or None when nothing serves it."""
    env = os.environ if environ is None else environ
    base, root = env.get(FILES_URL_ENV), env.get(FILES_ROOT_ENV)
    if not base or not root:
        return None
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        log.warning("%s is outside the served folder %s; no URL for it", path, root)
        return None
    return base.rstrip("/") + "/" + quote(rel.as_posix())


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def summary_markdown(manifest: dict[str, Any], folder: Path, urls: dict[str, str | None]) -> str:
    """The run's summary: images, prompt, topics, candidates with scores, time per stage."""
    lines = [f"# {_fmt(manifest.get('title') or manifest['source'])}", ""]
    cover = urls.get("cover.png")
    if cover:
        lines += [f"![cover]({cover})", ""]
    lines += [
        f"**Source:** {manifest['source']}"
        + (f" (text by {manifest['article']['extractor']})" if "article" in manifest else "") + "  ",
        f"**Prompt:** {_fmt(manifest['prompt'])}  ",
        f"**Negative prompt:** {_fmt(manifest.get('negative_prompt') or None)}  ",
        f"**Model:** {manifest['model'].get('name')}"
        + (" (random init)" if manifest["model"].get("random_init") else "")
        + f", seed {manifest.get('seed')}  ",
        f"**Output:** `{folder}`",
        "",
        f"## Topics ({manifest['topics']['extractor']})",
        "",
        "| # | topic | score |",
        "|---|---|---|",
    ]
    for i, topic in enumerate(manifest["topics"]["merged"], start=1):
        lines.append(f"| {i} | {_fmt(topic.get('phrase'))} | {_fmt(topic.get('score'))} |")
    lines += ["", f"## Candidates (ranking: {manifest.get('ranking', '–')})", "",
              "| rank | file | CLIP score | image |", "|---|---|---|---|"]
    for cand in manifest.get("candidates", []):
        url = urls.get(cand["file"])
        image = f"![{cand['file']}]({url})" if url else f"`{folder / cand['file']}`"
        lines.append(f"| {cand['rank']} | {cand['file']} | {_fmt(cand.get('score'), 4)} | {image} |")
    timings = manifest.get("timings", {})
    lines += ["", "## Time per stage (s)", "", "| " + " | ".join(timings) + " | total |",
              "|" + "---|" * (len(timings) + 1),
              "| " + " | ".join(_fmt(float(v), 2) for v in timings.values())
              + f" | {_fmt(float(sum(timings.values())), 2)} |"]
    return "\n".join(lines) + "\n"


def candidate_rows(manifest: dict[str, Any], urls: dict[str, str | None]) -> list[dict[str, Any]]:
    return [
        {"rank": c["rank"], "file": c["file"], "score": c.get("score"), "sample_index": c.get("sample_index"),
         "url": urls.get(c["file"]) or ""}
        for c in manifest.get("candidates", [])
    ]


def publish_run(manifest: dict[str, Any], folder: str | os.PathLike) -> dict[str, Any]:
    """Create the run's artifacts (call inside a flow run). Returns the URLs used, for the manifest/log."""
    from prefect.artifacts import (
        create_image_artifact,
        create_markdown_artifact,
        create_table_artifact,
    )

    folder = Path(folder)
    files = ["cover.png"] + [c["file"] for c in manifest.get("candidates", [])]
    urls = {name: file_url(folder / name) for name in files}
    # Keyed by the post (title slug, not the folder's -2/-3 suffix): the Artifacts page then keeps
    # one entry per post with a version per run.
    from flows.output import slugify

    key = artifact_key("covercraft", slugify(manifest.get("title") or folder.name))
    try:
        create_markdown_artifact(summary_markdown(manifest, folder, urls), key=key,
                                 description=f"Covercraft result for {manifest['source']}")
        create_table_artifact(candidate_rows(manifest, urls), key=f"{key}-candidates",
                              description="candidates ranked by CLIP score")
        if urls["cover.png"]:
            create_image_artifact(urls["cover.png"], key=f"{key}-cover", description="cover.png (best candidate)")
        for cand in manifest.get("candidates", []):
            if urls[cand["file"]]:
                create_image_artifact(urls[cand["file"]], description=f"rank {cand['rank']}: {cand['file']}")
    except Exception as err:  # a view must not fail the run that already wrote its files
        log.warning("could not publish artifacts for %s: %s", folder, err)
    return {"artifact_key": key, "urls": urls}


def start_progress(description: str) -> str | None:
    """A progress artifact at 0 % for the current run; its id (str) or None when the API refuses."""
    from prefect.artifacts import create_progress_artifact

    try:
        return str(create_progress_artifact(0.0, description=description))
    except Exception as err:
        log.warning("no progress artifact: %s", err)
        return None


def progress_updater(artifact_id: str | None, also: ProgressFn | None = None, step: float = 5.0) -> ProgressFn:
    """``(done, total)`` → update the progress artifact every ``step`` percent (and at the end).

    Each update is one API call, so a 256-token decode makes ~20 calls, not 256. ``also`` receives
    every report (the log or terminal bar). Works in any process that reaches the Prefect API (the
    task worker updates the artifact its flow run created).
    """
    from uuid import UUID

    state = {"last": -step, "broken": artifact_id is None}

    def update(done: int, total: int) -> None:
        if also is not None:
            also(done, total)
        if state["broken"]:
            return
        pct = 100.0 * done / max(total, 1)
        if pct - state["last"] < step and done < total:
            return
        state["last"] = pct
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(UUID(artifact_id), pct)
        except Exception as err:
            state["broken"] = True
            log.warning("progress artifact updates stopped: %s", err)

    return update
