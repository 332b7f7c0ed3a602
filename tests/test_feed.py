"""The feed watcher: parsing, and the outbox against a feed served on loopback (prefect_test_harness)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from flows import feed

RSS = """<?xml version="1.0"?>
<rss version="2.0" xmlns:content="http://purl.org/rss/1.0/modules/content/"><channel>
<title>Blog</title>{items}</channel></rss>"""
ITEM = "<item><title>{title}</title><link>{link}</link><content:encoded><![CDATA[{body}]]></content:encoded></item>"


def rss(*posts: tuple[str, str, str]) -> bytes:
    return RSS.format(items="".join(ITEM.format(link=u, title=t, body=b) for u, t, b in posts)).encode()


# ---------------------------------------------------------------- parsing


def test_rss_links_titles_and_hashes():
    posts, children = feed.parse_feed(rss(("/a", "A", "<p>one two</p>"), ("https://x.org/b", "B", "x")),
                                      "https://blog.example/feed.xml")
    assert children == []
    assert [p.url for p in posts] == ["https://blog.example/a", "https://x.org/b"]
    assert [p.title for p in posts] == ["A", "B"]
    again, _ = feed.parse_feed(rss(("/a", "A", "<p>one\n   two</p>")), "https://blog.example/feed.xml")
    assert again[0].content_hash == posts[0].content_hash  # whitespace is not a change
    edited, _ = feed.parse_feed(rss(("/a", "A", "<p>one three</p>")), "https://blog.example/feed.xml")
    assert edited[0].content_hash != posts[0].content_hash
    assert posts[0].key == f"https://blog.example/a#{posts[0].content_hash}"


def test_atom_and_sitemaps():
    atom = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>
      <entry><title>E1</title><link rel="self" href="/self"/><link href="/e1"/><content>body</content></entry>
      <entry><title>no link</title></entry></feed>"""
    posts, _ = feed.parse_feed(atom, "https://b.example/atom.xml")
    assert [(p.url, p.title) for p in posts] == [("https://b.example/e1", "E1")]

    urlset = b"""<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <url><loc>https://b.example/p1</loc><lastmod>2024-01-01</lastmod></url>
      <url><loc>https://b.example/p2</loc></url></urlset>"""
    posts, _ = feed.parse_feed(urlset, "https://b.example/sitemap.xml")
    assert [p.url for p in posts] == ["https://b.example/p1", "https://b.example/p2"]
    bumped, _ = feed.parse_feed(urlset.replace(b"2024-01-01", b"2024-02-01"), "https://b.example/s.xml")
    assert bumped[0].content_hash != posts[0].content_hash and bumped[1].content_hash == posts[1].content_hash

    index = b"""<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
      <sitemap><loc>/s1.xml</loc></sitemap></sitemapindex>"""
    assert feed.parse_feed(index, "https://b.example/index.xml") == ([], ["https://b.example/s1.xml"])


@pytest.mark.parametrize("data,match", [(b"<html><body/></html>", "not RSS, Atom"), (b"not xml", "not valid XML")])
def test_bad_feeds_name_the_problem(data, match):
    with pytest.raises(feed.FeedError, match=match):
        feed.parse_feed(data, "https://b.example/x")


def test_corrupt_state_is_refused(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(feed.FeedError, match="unreadable"):
        feed.FeedState(path)


# ---------------------------------------------------------------- the outbox against a real API


class FeedServer:
    """Serves ``self.body`` at http://127.0.0.1:PORT/feed.xml."""

    def __init__(self):
        self.body = rss()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                data = owner.body
                self.send_response(200)
                self.send_header("Content-Type", "application/rss+xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/feed.xml"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(monkeypatch):
    """A feed on loopback, which the address check refuses unless fetch.allow_private is set."""
    monkeypatch.setenv("COVERCRAFT_FETCH__ALLOW_PRIVATE", "true")
    server = FeedServer()
    yield server
    server.close()


def test_feeds_go_through_the_address_check(prefect_server, served, monkeypatch):
    from nlp.errors import BlockedAddressError
    from nlp.fetch import FetchSettings

    with pytest.raises(BlockedAddressError, match="allow_private"):
        feed._download(served.url, FetchSettings())
    monkeypatch.delenv("COVERCRAFT_FETCH__ALLOW_PRIVATE")
    assert feed.feed_fetch_settings().allow_private is False
    with pytest.raises(BlockedAddressError):
        feed.read_feed(served.url)
    monkeypatch.setenv("COVERCRAFT_FETCH__ALLOW_PRIVATE", "true")
    assert feed.read_feed(served.url) == []  # the default feed has no items


@pytest.fixture
def target(prefect_server):
    """A fresh deployment to start runs of; returns (name, count_runs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    name = f"t-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("feed-target")
        dep_id = client.create_deployment(flow_id=flow_id, name=name)

    def runs() -> list:
        with get_client(sync_client=True) as client:
            return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])))

    return f"feed-target/{name}", runs


def watch(served, state, deployment):
    return feed.watch_feed(feeds=[served.url], state_file=str(state), deployment=deployment,
                           parameters={"style": "watercolor"})


def test_new_same_changed(served, target, tmp_path):
    deployment, runs = target
    state = tmp_path / "state.json"
    served.body = rss(("/post-1", "One", "first version"))
    assert watch(served, state, deployment)["submitted"] == 1
    (run,) = runs()
    assert run.parameters == {"style": "watercolor", "source": served.url.replace("feed.xml", "post-1")}
    assert run.idempotency_key.startswith(run.parameters["source"] + "#")

    assert watch(served, state, deployment)["submitted"] == 0  # same post again: nothing
    assert len(runs()) == 1

    served.body = rss(("/post-1", "One", "second version"))  # changed content: one more
    assert watch(served, state, deployment)["submitted"] == 1
    assert len(runs()) == 2
    saved = json.loads(state.read_text())["posts"]
    assert {r["status"] for r in saved.values()} == {"submitted"}


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("step", ["read", "recorded", "created", "marked"])
def test_crash_at_each_step_then_restart(served, target, tmp_path, monkeypatch, step):
    deployment, runs = target
    state = tmp_path / "state.json"
    served.body = rss(("/p1", "P1", "a"), ("/p2", "P2", "b"))

    def crash(at):
        if at == step:
            raise Crash(at)

    monkeypatch.setattr(feed, "_crash_point", crash)
    with pytest.raises(Crash):
        watch(served, state, deployment)
    monkeypatch.setattr(feed, "_crash_point", lambda at: None)
    watch(served, state, deployment)
    urls = sorted(r.parameters["source"] for r in runs())
    assert urls == [served.url.replace("feed.xml", p) for p in ("p1", "p2")]


KILLER = textwrap.dedent("""
    import os, signal, sys
    from flows import feed
    def die(step):
        if step == "created":
            os.kill(os.getpid(), signal.SIGKILL)
    feed._crash_point = die
    feed.watch_feed(feeds=[sys.argv[1]], state_file=sys.argv[2], deployment=sys.argv[3])
""")


def test_kill_9_after_run_created(served, target, tmp_path):
    """A real SIGKILL between creating the run and recording it: the restart creates no duplicate."""
    from prefect.settings import PREFECT_API_URL

    deployment, runs = target
    state = tmp_path / "state.json"
    served.body = rss(("/k1", "K1", "a"), ("/k2", "K2", "b"))
    env = dict(os.environ, PREFECT_API_URL=PREFECT_API_URL.value(), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.run([sys.executable, "-c", KILLER, served.url, str(state), deployment],
                          env=env, capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(runs()) == 1  # created on the server, not yet marked in the state file
    assert [r["status"] for r in json.loads(state.read_text())["posts"].values()] == ["pending", "pending"]
    watch(served, state, deployment)
    assert sorted(r.parameters["source"] for r in runs()) == [served.url.replace("feed.xml", p) for p in ("k1", "k2")]


def _end_run(run_id: str, state) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, state, force=True)


def test_failed_and_crashed_runs_are_retried_with_backoff_then_given_up(served, target, tmp_path):
    from prefect.states import Completed, Crashed, Failed

    deployment, runs = target
    state = tmp_path / "state.json"
    served.body = rss(("/r1", "R1", "a"), ("/r2", "R2", "b"))

    def tick(backoff=0.0):
        return feed.watch_feed(feeds=[served.url], state_file=str(state), deployment=deployment,
                               max_attempts=3, retry_backoff_minutes=backoff)

    assert tick()["submitted"] == 2
    first = {r.parameters["source"].rsplit("/", 1)[1]: r for r in runs()}
    _end_run(first["r1"].id, Crashed(message="serve was killed"))  # a killed `serve`
    _end_run(first["r2"].id, Completed())
    # Backoff not over yet: the crash is recorded, nothing is started.
    out = tick(backoff=60)
    assert (out["retried"], out["submitted"]) == (1, 0)
    saved = json.loads(state.read_text())["posts"]
    r1 = saved[served.url.replace("feed.xml", "r1")]
    assert (r1["status"], r1["attempt"]) == ("pending", 2) and "Crashed" in r1["last_error"].title()
    assert saved[served.url.replace("feed.xml", "r2")]["status"] == "done"
    # Backoff over (rewind the clock on the record): attempt 2 gets a run of its own.
    r1["retry_after"] = "2000-01-01T00:00:00+00:00"
    state.write_text(json.dumps({"version": 1, "posts": saved}))
    assert tick()["submitted"] == 1
    r1_runs = sorted((r for r in runs() if r.parameters["source"].endswith("/r1")), key=lambda r: r.created)
    assert [r.idempotency_key.rsplit("#", 1)[-1] for r in r1_runs][1] == "2"
    _end_run(r1_runs[-1].id, Failed(message="bad download"))
    assert tick()["submitted"] == 1  # attempt 3
    r1_runs = [r for r in runs() if r.parameters["source"].endswith("/r1")]
    assert len(r1_runs) == 3
    latest = max(r1_runs, key=lambda r: r.created)
    _end_run(latest.id, Failed(message="bad download"))
    out = tick()
    assert (out["gave_up"], out["submitted"]) == (1, 0)
    r1 = json.loads(state.read_text())["posts"][served.url.replace("feed.xml", "r1")]
    assert r1["status"] == "failed" and "bad download" in r1["last_error"]
    assert tick()["submitted"] == 0 and len(runs()) == 4  # given up: nothing more


def test_a_lost_state_file_does_not_hand_back_a_failed_run(served, target, tmp_path):
    from prefect.states import Failed

    deployment, runs = target
    state = tmp_path / "state.json"
    served.body = rss(("/s1", "S1", "a"))
    watch(served, state, deployment)
    (run,) = runs()
    _end_run(run.id, Failed(message="boom"))
    state.unlink()  # an operator starts over
    assert watch(served, state, deployment)["submitted"] == 1
    assert len(runs()) == 2  # a new attempt, not the failed run handed back by its key
    rec = json.loads(state.read_text())["posts"][served.url.replace("feed.xml", "s1")]
    assert (rec["status"], rec["attempt"]) == ("submitted", 2)


def test_second_watcher_skips_while_locked(served, target, tmp_path):
    deployment, runs = target
    state = tmp_path / "state.json"
    served.body = rss(("/l1", "L1", "a"))
    with feed.state_lock(state) as got:
        assert got
        assert watch(served, state, deployment)["skipped"] is True
    assert runs() == []
