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
def served():
    server = FeedServer()
    yield server
    server.close()


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


def test_second_watcher_skips_while_locked(served, target, tmp_path):
    deployment, runs = target
    state = tmp_path / "state.json"
    served.body = rss(("/l1", "L1", "a"))
    with feed.state_lock(state) as got:
        assert got
        assert watch(served, state, deployment)["skipped"] is True
    assert runs() == []
