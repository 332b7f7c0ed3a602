"""The CLI's bad-input contract: one clear line, exit code 2, no output folder."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args, capsys):
    rc = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err[-1] if err else ""


def assert_no_output(out: Path):
    assert not out.exists() or [p for p in out.iterdir()] == []


def test_missing_file(tmp_path, capsys):
    rc, line = run_cli(["run", str(tmp_path / "nope.md"), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "does not exist" in line and "URL" in line
    assert_no_output(tmp_path / "out")


def test_unknown_config_key(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output:\n  dri: x\n")
    post = ROOT / "examples" / "red-circle-brand.md"
    rc, line = run_cli(["run", str(post), "--config", str(cfg), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "unknown config key 'output.dri'" in line
    assert_no_output(tmp_path / "out")


def test_unknown_platform_is_refused_before_any_work(tmp_path, capsys):
    post = ROOT / "examples" / "red-circle-brand.md"
    rc = main(["run", str(post), "--platforms", "og,tiktok", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    # One line and nothing before it: the run never started (it would print "covercraft: POST -> OUT").
    assert rc == 2 and len(err) == 1, err
    assert "unknown platform(s) 'tiktok'" in err[0] and "og=blog" in err[0]
    assert_no_output(tmp_path / "out")


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    post = ROOT / "examples" / "red-circle-brand.md"
    rc, line = run_cli(["run", str(post), "--out", str(blocker / "out")], capsys)
    assert rc == 2 and "cannot write to output folder" in line


class _Handler(http.server.BaseHTTPRequestHandler):
    routes = {
        "/cat.png": ("image/png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
        "/paper.pdf": ("application/pdf", b"%PDF-1.4\n" + b"\0" * 64),
    }

    def do_GET(self):  # noqa: N802
        ctype, body = self.routes.get(self.path, ("text/plain", b""))
        self.send_response(200 if self.path in self.routes else 404)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture
def local_ok(tmp_path):
    cfg = tmp_path / "local.yaml"
    cfg.write_text("fetch:\n  allow_private: true\n  timeout_connect: 1\n  timeout_read: 2\n")
    return cfg


@pytest.mark.parametrize("path, word", [("/cat.png", "image/png"), ("/paper.pdf", "application/pdf")])
def test_url_with_non_article_content(prefect_server, server, local_ok, tmp_path, capsys, path, word):
    rc, line = run_cli(["run", server + path, "--config", str(local_ok), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and word in line
    assert_no_output(tmp_path / "out")


def test_unreachable_url(prefect_server, local_ok, tmp_path, capsys, monkeypatch):
    import flows.pipeline as pipeline

    monkeypatch.setattr(pipeline, "fetch_post", pipeline.fetch_post.with_options(retry_delay_seconds=0))
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, line = run_cli(["run", f"http://127.0.0.1:{port}/post", "--config", str(local_ok),
                        "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "127.0.0.1" in line
    assert_no_output(tmp_path / "out")


def test_private_address_refused_by_default(prefect_server, server, tmp_path, capsys):
    rc, line = run_cli(["run", server + "/post", "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "allow_private" in line
    assert_no_output(tmp_path / "out")


def test_empty_article(prefect_server, tmp_path, capsys):
    empty = tmp_path / "empty.md"
    empty.write_text("\n\n   \n")
    rc, line = run_cli(["run", str(empty), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "empty" in line.lower()
    assert_no_output(tmp_path / "out")


def test_login_wall(prefect_server, tmp_path, capsys):
    wall = tmp_path / "wall.html"
    wall.write_text("<html><body><h1>Members only</h1><form action='/login'><label>Email "
                    "<input name='e'></label><button>Sign in to keep reading</button></form>"
                    "<p>Not a member? Join now.</p></body></html>")
    rc, line = run_cli(["run", str(wall), "--out", str(tmp_path / "out")], capsys)
    assert rc == 2 and "no article text" in line
    assert_no_output(tmp_path / "out")


def test_styles_lists_every_preset_with_its_words_and_the_default(capsys, monkeypatch):
    from nlp.prompt import STYLE_PRESETS

    monkeypatch.delenv("COVERCRAFT_PROMPT__STYLE", raising=False)
    assert main(["styles"]) == 0
    out = capsys.readouterr().out
    for name in STYLE_PRESETS:
        assert name in out
    assert "plain (default)" in out and "adds: nothing; no platform words" in out
    assert "adds: digital illustration, vibrant colors" in out
    monkeypatch.setenv("COVERCRAFT_PROMPT__STYLE", "watercolor")
    assert main(["styles"]) == 0
    assert "watercolor (default)" in capsys.readouterr().out
