"""The ``watch-feed`` flow: new or changed posts in RSS/Atom feeds or sitemaps → one blog-to-images run each.

Crash safety is an outbox on a JSON state file (written by atomic rename, fsynced):

1. read every feed; a post is ``(url, content_hash)``;
2. every post whose URL is unknown or whose hash differs from the recorded one is recorded as a
   *pending* intent with its idempotency key ``<url>#<hash>``, and the state file is saved;
3. for each pending intent a flow run of the deployment is created **with that idempotency key**
   (Prefect returns the existing run when the key was already used), then the intent is marked
   *submitted* with the run id and the state file is saved again.

Killed (``kill -9``) anywhere, the next run finds the pending intents and finishes them: a post
recorded before the crash is never lost, and a run created before the crash is returned again by
the server instead of being created twice. A file lock keeps two watchers from sharing the state.

Each tick also reads the state of the runs it started. A run that failed or crashed (a killed
``covercraft serve``, a bad download) is an attempt spent: the post is pending again with the key
``<url>#<hash>#<attempt>`` after a backoff (``retry_backoff_minutes``, doubling), up to
``max_attempts`` runs, and then ``failed`` with its last error in the log and the state file. A
key that hands back a run which already failed (a deleted state file) is skipped the same way.

The content hash covers what the feed says about the post: title and body for RSS/Atom (whitespace
normalised, so re-indenting does not count as a change), ``lastmod`` for sitemaps (a sitemap entry
without ``lastmod`` is picked up once, when it first appears).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urljoin

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff
from pydantic import Field

from nlp.errors import FetchError
from nlp.fetch import FetchSettings, download

STATE_VERSION = 1
MAX_FEED_BYTES = 20_000_000
MAX_SITEMAP_DEPTH = 3
DEFAULT_DEPLOYMENT = "blog-to-images/covercraft"  # configs/deploy.yaml deployments.blog_to_images


class FeedError(ValueError):
    """A feed could not be read or parsed; the message names the feed and the fix."""


@dataclass(frozen=True)
class FeedPost:
    """One post as a feed describes it. ``content_hash`` is 16 hex chars of sha256."""

    url: str
    content_hash: str
    title: str = ""

    @property
    def key(self) -> str:
        """The idempotency key of the first blog-to-images run for this version of the post."""
        return attempt_key(self.url, self.content_hash, 1)


# ---------------------------------------------------------------- parsing (pure, no I/O)


def _local(tag: str) -> str:
    # Feeds mix namespaces freely (content:encoded, atom:link inside RSS); match on local names.
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(node: ET.Element, *names: str) -> ET.Element | None:
    for name in names:
        for sub in node:
            if _local(sub.tag) == name:
                return sub
    return None


def _text(node: ET.Element | None) -> str:
    return "".join(node.itertext()).strip() if node is not None else ""


def content_hash(*parts: str) -> str:
    """sha256 over whitespace-normalised parts, 16 hex chars."""
    norm = "\x1f".join(re.sub(r"\s+", " ", p).strip() for p in parts)
    return hashlib.sha256(norm.encode("utf-8")).hexdigest()[:16]


def _rss_items(root: ET.Element, base: str) -> list[FeedPost]:
    posts = []
    for item in root.iter():
        if _local(item.tag) != "item":
            continue
        link = _text(_child(item, "link"))
        if not link:
            guid = _child(item, "guid")
            if guid is not None and guid.get("isPermaLink", "true") != "false":
                link = _text(guid)
        if not link:
            continue
        title = _text(_child(item, "title"))
        body = _text(_child(item, "encoded", "description"))
        posts.append(FeedPost(urljoin(base, link), content_hash(title, body), title))
    return posts


def _atom_entries(root: ET.Element, base: str) -> list[FeedPost]:
    posts = []
    for entry in root:
        if _local(entry.tag) != "entry":
            continue
        link = ""
        for sub in entry:
            if _local(sub.tag) == "link" and sub.get("rel", "alternate") == "alternate":
                link = sub.get("href", "")
                break
        if not link:
            continue
        title = _text(_child(entry, "title"))
        body = _text(_child(entry, "content", "summary"))
        posts.append(FeedPost(urljoin(base, link), content_hash(title, body), title))
    return posts


def _sitemap_urls(root: ET.Element, base: str) -> list[FeedPost]:
    posts = []
    for node in root:
        if _local(node.tag) != "url":
            continue
        loc = _text(_child(node, "loc"))
        if loc:
            posts.append(FeedPost(urljoin(base, loc), content_hash(_text(_child(node, "lastmod")))))
    return posts


def parse_feed(data: bytes, base_url: str) -> tuple[list[FeedPost], list[str]]:
    """Parse RSS 2.0/1.0, Atom or a sitemap. Returns (posts, child sitemap URLs of a sitemap index)."""
    try:
        # The stdlib parser resolves no external entities and expat ≥ 2.4 refuses entity blow-ups.
        root = ET.fromstring(data)
    except ET.ParseError as err:
        raise FeedError(f"feed {base_url} is not valid XML ({err}); check that the URL points at an RSS/Atom feed or a sitemap") from None
    kind = _local(root.tag)
    if kind in ("rss", "RDF"):
        return _rss_items(root, base_url), []
    if kind == "feed":
        return _atom_entries(root, base_url), []
    if kind == "urlset":
        return _sitemap_urls(root, base_url), []
    if kind == "sitemapindex":
        children = [_text(_child(n, "loc")) for n in root if _local(n.tag) == "sitemap"]
        return [], [urljoin(base_url, c) for c in children if c]
    raise FeedError(f"feed {base_url}: root element <{kind}> is not RSS, Atom or a sitemap; give a feed or sitemap URL")


# ---------------------------------------------------------------- network


_FEED_TYPES = {"application/rss+xml", "application/atom+xml", "application/xml", "text/xml",
               "application/rdf+xml", "text/plain", "text/html", "application/octet-stream"}
_FEED_ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.1"


def feed_fetch_settings(cfg: Any | None = None) -> FetchSettings:
    """How feeds are downloaded: the ``fetch`` settings posts use (address check, timeouts,
    ``allow_private``), with room for large sitemaps."""
    if cfg is None:
        from flows.settings import load_settings

        cfg = load_settings().fetch
    return FetchSettings(**{**cfg.model_dump(), "max_bytes": MAX_FEED_BYTES})


def _download(url: str, settings: FetchSettings) -> bytes:
    if url.startswith("file://") or "://" not in url:
        path = Path(url.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise FeedError(f"feed file {path} does not exist; give an http(s) URL or an existing file")
        return path.read_bytes()
    # Feeds go through the same address check as posts: a feed URL (or a redirect, or a sitemap
    # index entry) cannot reach loopback, private or metadata addresses unless fetch.allow_private.
    got = download(url, settings, media_types=_FEED_TYPES, accept=_FEED_ACCEPT,
                   what="an RSS/Atom feed or a sitemap")
    return got.data


def _retry_network(task, task_run, state) -> bool:
    """Retry timeouts, connection trouble and 5xx/429, never bad URLs, refused addresses or
    unparsable feeds."""
    try:
        state.result()
    except FetchError as err:
        return err.transient
    except Exception:
        return False
    return False


@task(name="read-feed", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, retry_condition_fn=_retry_network, timeout_seconds=120)
def read_feed(url: str, settings: FetchSettings | None = None) -> list[FeedPost]:
    """All posts of one feed (a sitemap index is followed to its sitemaps)."""
    settings = settings or feed_fetch_settings()
    posts: list[FeedPost] = []
    queue, seen = [(url, 0)], set()
    while queue:
        current, depth = queue.pop(0)
        if current in seen:
            continue
        seen.add(current)
        found, children = parse_feed(_download(current, settings), current)
        posts.extend(found)
        if depth < MAX_SITEMAP_DEPTH:
            queue.extend((c, depth + 1) for c in children)
    get_run_logger().info("%s: %d posts", url, len(posts))
    return posts


# ---------------------------------------------------------------- the outbox


def _crash_point(step: str) -> None:
    """Step boundaries of the outbox; tests replace this to crash the watcher at each of them."""


class FeedState:
    """The persisted outbox: ``posts[url] = {hash, key, attempt, status, flow_run_id, ...}``.

    ``status``: ``pending`` (to submit; ``retry_after`` for a retry), ``submitted`` (its run not
    finished yet), ``done`` (the run completed or was cancelled) or ``failed`` (every attempt failed).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self.posts: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise FeedError(f"feed state {self.path} is unreadable ({err}); restore it from backup or delete it to start over (every post in the feeds is then new)") from None
            if data.get("version") != STATE_VERSION:
                raise FeedError(f"feed state {self.path} has version {data.get('version')!r}, expected {STATE_VERSION}")
            self.posts = data.get("posts", {})

    def save(self) -> None:
        """Atomic: write a temporary file, fsync, rename over the old state, fsync the folder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": STATE_VERSION, "posts": self.posts}, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def record(self, posts: list[FeedPost]) -> list[FeedPost]:
        """Record new or changed posts as pending intents (in memory); returns them."""
        changed = []
        for post in posts:
            rec = self.posts.get(post.url)
            if rec is not None and rec["hash"] == post.content_hash:
                continue
            self.posts[post.url] = {
                "hash": post.content_hash, "key": post.key, "attempt": 1, "status": "pending", "title": post.title,
                "flow_run_id": None, "seen": datetime.now(UTC).isoformat(timespec="seconds"),
                "previous_hash": rec["hash"] if rec else None,
            }
            changed.append(post)
        return changed

    def pending(self, now: datetime | None = None) -> list[tuple[str, dict[str, Any]]]:
        """Intents to submit now: new ones, and retries whose backoff has passed."""
        now = now or datetime.now(UTC)
        return sorted((u, r) for u, r in self.posts.items() if r["status"] == "pending"
                      and (r.get("retry_after") is None or datetime.fromisoformat(r["retry_after"]) <= now))

    def submitted(self) -> dict[str, dict[str, Any]]:
        """Posts whose run has not finished yet, by flow run id."""
        return {r["flow_run_id"]: r | {"url": u} for u, r in self.posts.items()
                if r["status"] == "submitted" and r.get("flow_run_id")}

    def mark_submitted(self, url: str, flow_run_id: str) -> None:
        self.posts[url].update(status="submitted", flow_run_id=flow_run_id,
                               submitted=datetime.now(UTC).isoformat(timespec="seconds"))

    def mark_done(self, url: str) -> None:
        self.posts[url].update(status="done", finished=datetime.now(UTC).isoformat(timespec="seconds"))

    def mark_failed(self, url: str, reason: str, retry: RetryPolicy) -> bool:
        """Record a failed attempt: a retry (pending again, next attempt, after its backoff) while
        attempts are left, else ``failed`` for good. Returns whether it will be retried."""
        rec = self.posts[url]
        attempt = int(rec.get("attempt", 1))
        rec["last_error"] = reason
        if attempt >= retry.max_attempts:
            rec.update(status="failed", finished=datetime.now(UTC).isoformat(timespec="seconds"))
            return False
        delay = retry.backoff_seconds * 2 ** (attempt - 1)
        rec.update(status="pending", attempt=attempt + 1, flow_run_id=None,
                   key=attempt_key(url, rec["hash"], attempt + 1),
                   retry_after=(datetime.now(UTC) + timedelta(seconds=delay)).isoformat(timespec="seconds"))
        return True


@dataclass(frozen=True)
class RetryPolicy:
    """A post whose run fails (or crashes) is started again up to ``max_attempts`` runs in all,
    ``backoff_seconds`` after the first failure, doubling after each further one."""

    max_attempts: int = 3
    backoff_seconds: float = 600.0


def attempt_key(url: str, content_hash: str, attempt: int) -> str:
    """Idempotency key of one attempt: ``<url>#<hash>`` for the first, ``…#<n>`` after."""
    return f"{url}#{content_hash}" + (f"#{attempt}" if attempt > 1 else "")


@contextlib.contextmanager
def state_lock(path: Path):
    """An exclusive, non-blocking lock next to the state file; yields False when another holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@task(name="create-run", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, timeout_seconds=60)
def create_run(deployment: str, url: str, key: str, parameters: dict[str, Any]) -> tuple[str, str]:
    """Create (or get back, by idempotency key) the flow run for one post version attempt; returns
    its id and state type (an old run handed back by its key may have failed already)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name(deployment)
        run = client.create_flow_run_from_deployment(
            dep.id, parameters={**parameters, "source": url}, idempotency_key=key, tags=["watch-feed"],
        )
    return str(run.id), (run.state.type.value if run.state else "SCHEDULED")


# A run that ends in one of these gets another attempt; CANCELLED is someone's decision and is not.
FAILED_STATES = {"FAILED", "CRASHED"}
FINISHED_STATES = {"COMPLETED", "CANCELLED"}


@task(name="check-runs", retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_jitter_factor=0.5, timeout_seconds=60)
def run_states(flow_run_ids: list[str]) -> dict[str, tuple[str, str]]:
    """State type and message of each flow run (ids the server no longer knows are left out)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    out: dict[str, tuple[str, str]] = {}
    with get_client(sync_client=True) as client:
        for start in range(0, len(flow_run_ids), 200):
            ids = flow_run_ids[start:start + 200]
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                                         limit=len(ids))
            for run in runs:
                if run.state is not None:
                    out[str(run.id)] = (run.state.type.value, run.state.message or run.state.name)
    return out


def watch_once(feeds: list[str], state_file: str, deployment: str = DEFAULT_DEPLOYMENT,
               parameters: dict[str, Any] | None = None, max_new_runs: int = 50,
               retry: RetryPolicy | None = None) -> dict[str, Any]:
    """One pass of the outbox (call inside a flow: it uses tasks). Returns counts for the log/tests."""
    logger = get_run_logger()
    path = Path(state_file).expanduser()
    with state_lock(path) as locked:
        if not locked:
            logger.warning("another watch-feed run holds %s; skipping this tick", path)
            return {"skipped": True, "recorded": 0, "submitted": 0}
        state = FeedState(path)
        found: list[FeedPost] = []
        failed = []
        fetch = feed_fetch_settings()
        for url in feeds:
            try:
                found.extend(read_feed(url, fetch))
            except Exception as err:  # one broken feed must not stop the others
                failed.append(url)
                logger.error("feed %s failed: %s", url, err)
        _crash_point("read")
        # Deduplicate by URL (a post listed by two feeds); the last listing wins.
        latest = {p.url: p for p in found}
        changed = state.record(list(latest.values()))
        if changed:
            state.save()
        _crash_point("recorded")
        retry = retry or RetryPolicy()
        retried, gave_up = _follow_runs(state, retry, logger)
        submitted = 0
        for url, rec in state.pending()[:max_new_runs]:
            run_id, kind = create_run(deployment, url, rec["key"], dict(parameters or {}))
            _crash_point("created")
            # The key handed back a run that already failed (the state file was lost or restored
            # from a backup): that attempt is spent, the next one gets a run of its own.
            while kind in FAILED_STATES and state.mark_failed(url, f"run {run_id} ended {kind}", retry):
                rec = state.posts[url]
                run_id, kind = create_run(deployment, url, rec["key"], dict(parameters or {}))
            if state.posts[url]["status"] == "failed":
                gave_up += 1
                state.save()
                continue
            state.mark_submitted(url, run_id)
            state.save()
            submitted += 1
            logger.info("post %s (%s) → flow run %s", url, rec["hash"], run_id)
            _crash_point("marked")
        left = len(state.pending())
        if left:
            logger.info("%d posts left for the next tick (max_new_runs=%d)", left, max_new_runs)
        if failed and len(failed) == len(feeds):
            raise FeedError(f"all {len(feeds)} feeds failed; see the log for each feed's error")
        return {"skipped": False, "recorded": len(changed), "submitted": submitted, "pending": left,
                "retried": retried, "gave_up": gave_up, "failed_feeds": failed}


def _follow_runs(state: FeedState, retry: RetryPolicy, logger) -> tuple[int, int]:
    """Read the state of every run still marked submitted: finished ones are done, failed or
    crashed ones are scheduled for another attempt (or given up on). Returns (retried, gave up)."""
    open_runs = state.submitted()
    if not open_runs:
        return 0, 0
    states = run_states(list(open_runs))
    retried = gave_up = 0
    for run_id, rec in open_runs.items():
        kind, message = states.get(run_id, ("MISSING", "the server no longer knows this run"))
        url = rec["url"]
        if kind in FINISHED_STATES:
            state.mark_done(url)
        elif kind in FAILED_STATES or kind == "MISSING":
            reason = f"run {run_id} ended {kind}: {message}"
            if state.mark_failed(url, reason, retry):
                retried += 1
                logger.warning("post %s: %s; attempt %d at %s", url, reason,
                               state.posts[url]["attempt"], state.posts[url]["retry_after"])
            else:
                gave_up += 1
                logger.error("post %s: %s; %d attempts failed, giving up (delete its entry in "
                             "the state file to try again)", url, reason, retry.max_attempts)
    state.save()
    return retried, gave_up


@flow(name="watch-feed", log_prints=False)
def watch_feed(
    feeds: Annotated[list[str], Field(min_length=1)],
    state_file: str,
    deployment: str = DEFAULT_DEPLOYMENT,
    parameters: dict[str, Any] | None = None,
    max_new_runs: Annotated[int, Field(ge=1, le=1000)] = 50,
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3,
    retry_backoff_minutes: Annotated[float, Field(ge=0, le=10080)] = 10.0,
) -> dict[str, Any]:
    """Start one blog-to-images run per post that is new or whose content changed since the last
    tick, and start failed or crashed runs again (with backoff) until ``max_attempts``.

    The Args below are the descriptions the Prefect UI shows in the run form.

    Args:
        feeds: RSS/Atom feed or sitemap URLs to watch.
        state_file: JSON file on the worker holding which post versions were already submitted.
        deployment: The deployment started once per new or changed post ("flow/deployment").
        parameters: Extra parameters for each started run, e.g. {"style": "watercolor"}.
        max_new_runs: Runs started per tick at most; the rest wait for the next tick.
        max_attempts: Runs per post version at most: a failed or crashed run is started again until then.
        retry_backoff_minutes: Wait before the first retry of a failed post; doubles after each further failure.
    """
    retry = RetryPolicy(max_attempts=max_attempts, backoff_seconds=retry_backoff_minutes * 60)
    return watch_once(feeds, state_file, deployment, parameters, max_new_runs, retry)
