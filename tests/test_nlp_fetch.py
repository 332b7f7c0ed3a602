"""nlp.fetch over real HTTP on loopback: content types, charsets, size cap, redirects, SSRF."""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from nlp import fetch as nlp_fetch
from nlp.errors import (
    BlockedAddressError,
    EmptyArticleError,
    FetchError,
    UnsupportedContentError,
)
from nlp.fetch import FetchSettings, decode_bytes, fetch_article

PAGES = Path(__file__).parent / "nlp_pages"
LOCAL = FetchSettings(allow_private=True, timeout_connect=2, timeout_read=2)

POST = (
    "<html><head><title>Tea gardens | Leaf Blog</title></head><body><nav><a href='/'>Home</a></nav>"
    "<article><h1>Tea gardens of Darjeeling</h1><p>The tea gardens of Darjeeling cling to slopes "
    "two thousand metres high, where mist and cold nights slow the leaves and deepen their flavour. "
    "Pickers move along the rows at dawn.</p><h2>First flush</h2><p>The first flush, picked in "
    "March, gives a light, floral cup that tea lovers wait for all winter, and it sells for the "
    "highest prices at auction.</p></article><footer>© Leaf Blog</footer></body></html>"
)
CAFE_HTML = (
    "<html><head><meta charset='windows-1252'></head><body><article><h1>Café crème</h1><p>A café "
    "crème in a Parisian café costs “four euros” — more than an espresso, but it comes with a "
    "view of the street and an hour to read the newspaper without anyone asking you to leave.</p>"
    "<p>Order it before eleven; after lunch, the waiters expect a noisette or an express.</p>"
    "</article></body></html>"
)


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    seen_hosts: list = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        type(self).seen_hosts.append(self.headers.get("Host"))
        route = type(self).routes.get(self.path.split("?")[0])
        if route is None:
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<h1>Not found</h1>")
            return
        route(self)


def _send(status=200, ctype="text/html; charset=utf-8", body=b"", headers=None, length=True):
    def handler(h):
        h.send_response(status)
        if ctype:
            h.send_header("Content-Type", ctype)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        if length:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    return handler


def _endless(h):
    """A body with no Content-Length that never ends within the cap (streamed 64 KB parts)."""
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.send_header("Connection", "close")
    h.end_headers()
    part = b"<p>" + b"x" * 65536 + b"</p>"
    try:
        for _ in range(200):
            h.wfile.write(part)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _trickle(h):
    """Sends a byte every 0.1 s: each read is quick, the whole body is not."""
    h.send_response(200)
    h.send_header("Content-Type", "text/html")
    h.send_header("Connection", "close")
    h.end_headers()
    try:
        for _ in range(100):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _slow(h):
    time.sleep(1.5)
    _send(body=POST.encode())(h)


class _Server:
    def __init__(self, host: str, routes: dict):
        handler = type("H", (_Handler,), {"routes": routes, "seen_hosts": []})
        self.handler = handler
        self.httpd = ThreadingHTTPServer((host, 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://{host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server():
    routes: dict = {}
    srv = _Server("127.0.0.1", routes)
    base = srv.base
    routes.update({
        "/post.html": _send(body=POST.encode()),
        "/cafe-meta": _send(ctype="text/html", body=CAFE_HTML.encode("cp1252")),
        "/cafe-header": _send(ctype="text/html; charset=ISO-8859-1",
                              body=CAFE_HTML.replace("windows-1252", "x").encode("cp1252")),
        "/cafe-wrong-header": _send(ctype="text/html; charset=utf-8",
                                    body=CAFE_HTML.encode("cp1252")),
        "/cafe-bom": _send(ctype="text/html", body=b"\xef\xbb\xbf"
                           + CAFE_HTML.replace("windows-1252", "iso-8859-1").encode()),
        "/image.png": _send(ctype="image/png", body=b"\x89PNG\r\n\x1a\n" + b"\0" * 100),
        "/doc.pdf": _send(ctype="application/pdf", body=b"%PDF-1.7\n"),
        "/disguised": _send(ctype="text/html", body=b"%PDF-1.4 binary"),
        "/no-type": _send(ctype=None, body=POST.encode()),
        "/big-declared": _send(body=b"x" * 3000),
        "/endless": _endless,
        "/gzip": _send(body=gzip.compress(POST.encode()), headers={"Content-Encoding": "gzip"}),
        "/post.md": _send(ctype="text/markdown; charset=utf-8",
                          body=(PAGES / "launch-checklist.md").read_bytes()),
        "/raw.md": _send(ctype="text/plain", body=b"# Raw title\n\nA paragraph of text.\n\n```\ncode\n```\n"),
        "/empty": _send(body=b"<html><body><nav><a href='/'>Home</a></nav><script>app()</script></body></html>"),
        "/redirect": _send(302, headers={"Location": "/post.html"}, body=b""),
        "/redirect-abs": _send(301, headers={"Location": f"{base}/redirect"}, body=b""),
        "/loop": _send(302, headers={"Location": "/loop"}, body=b""),
        "/to-ftp": _send(302, headers={"Location": "ftp://example.com/x"}, body=b""),
        "/busy": _send(503, body=b"busy"),
        "/slow": _slow,
        "/trickle": _trickle,
    })
    yield srv
    srv.close()


def test_fetches_and_extracts_a_post(server):
    art = fetch_article(server.base + "/post.html", LOCAL)
    assert art.title == "Tea gardens of Darjeeling"
    assert [s.heading for s in art.sections] == [None, "First flush"]
    assert "Home" not in art.text and "©" not in art.text
    assert art.source.endswith("/post.html")


@pytest.mark.parametrize("path", ["/cafe-meta", "/cafe-header", "/cafe-wrong-header", "/cafe-bom"])
def test_charsets(server, path):
    art = fetch_article(server.base + path, LOCAL)
    assert art.title == "Café crème"
    assert "“four euros” — more" in art.text
    assert "\ufffd" not in art.text


def test_decode_bytes_order():
    text = "naïve café"
    assert decode_bytes(text.encode("utf-16"))[0] == text  # BOM wins
    assert decode_bytes(text.encode("cp1252"), "iso-8859-1") == (text, "cp1252")  # WHATWG label
    assert decode_bytes(text.encode("utf-8"), "no-such-charset")[0] == text
    # Declared UTF-8 that is not: detection takes over instead of replacement characters.
    body = ("Ein schöner Tag für Müller und Söhne, größer als gestern. " * 5).encode("cp1252")
    assert "ö" in decode_bytes(body, "utf-8")[0]


@pytest.mark.parametrize("path, kind", [("/image.png", "image/png"), ("/doc.pdf", "application/pdf"),
                                        ("/disguised", "application/pdf")])
def test_refuses_non_text_content(server, path, kind):
    with pytest.raises(UnsupportedContentError, match=kind):
        fetch_article(server.base + path, LOCAL)


def test_missing_content_type_is_sniffed(server):
    assert fetch_article(server.base + "/no-type", LOCAL).title == "Tea gardens of Darjeeling"


def test_size_cap(server):
    small = LOCAL.model_copy(update={"max_bytes": 1000})
    with pytest.raises(FetchError, match="1000-byte limit"):
        fetch_article(server.base + "/big-declared", small)
    t0 = time.perf_counter()
    with pytest.raises(FetchError, match="larger than the 200000-byte limit"):
        fetch_article(server.base + "/endless", LOCAL.model_copy(update={"max_bytes": 200_000}))
    assert time.perf_counter() - t0 < 10  # stopped streaming, did not read 13 MB


def test_gzip_body_is_decoded(server):
    assert "first flush" in fetch_article(server.base + "/gzip", LOCAL).text.lower()


def test_markdown_over_http(server):
    art = fetch_article(server.base + "/post.md", LOCAL)
    assert art.title.startswith("Our product launch checklist")
    raw = fetch_article(server.base + "/raw.md", LOCAL)
    assert raw.title == "Raw title" and "code" not in raw.text


def test_redirects(server):
    assert fetch_article(server.base + "/redirect-abs", LOCAL).title == "Tea gardens of Darjeeling"
    with pytest.raises(FetchError, match="redirected more than 5 times"):
        fetch_article(server.base + "/loop", LOCAL)
    no_redirects = LOCAL.model_copy(update={"max_redirects": 0})
    with pytest.raises(FetchError, match="more than 0 times"):
        fetch_article(server.base + "/redirect", no_redirects)
    with pytest.raises(FetchError, match="only http"):
        fetch_article(server.base + "/to-ftp", LOCAL)


def test_http_errors_are_clear_and_classified(server):
    with pytest.raises(FetchError, match="HTTP 404") as err:
        fetch_article(server.base + "/missing", LOCAL)
    assert err.value.transient is False and err.value.status == 404
    with pytest.raises(FetchError, match="HTTP 503") as err:
        fetch_article(server.base + "/busy", LOCAL)
    assert err.value.transient is True


def test_read_timeout(server):
    fast = LOCAL.model_copy(update={"timeout_read": 0.3})
    with pytest.raises(FetchError, match="timed out") as err:
        fetch_article(server.base + "/slow", fast)
    assert err.value.transient


def test_total_timeout(server):
    settings = LOCAL.model_copy(update={"timeout_read": 1.0, "timeout_total": 0.6})
    t0 = time.perf_counter()
    with pytest.raises(FetchError, match="longer than 0.6 s in total") as err:
        fetch_article(server.base + "/trickle", settings)
    assert err.value.transient and time.perf_counter() - t0 < 3


def test_connection_refused_is_transient():
    with pytest.raises(FetchError, match="could not fetch") as err:
        fetch_article("http://127.0.0.1:9/post", LOCAL)
    assert err.value.transient


def test_empty_page(server):
    with pytest.raises(EmptyArticleError, match="no article text"):
        fetch_article(server.base + "/empty", LOCAL)


# --- SSRF -------------------------------------------------------------------------------------


def test_loopback_refused_by_default(server):
    with pytest.raises(BlockedAddressError, match="loopback"):
        fetch_article(server.base + "/post.html")


@pytest.mark.parametrize("url, reason", [
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://192.168.0.1:8080/admin", "private"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://100.64.0.1/", "non-public"),
    ("http://[fe80::1]/", "link-local"),
])
def test_private_literals_refused(url, reason):
    with pytest.raises(BlockedAddressError, match=reason):
        fetch_article(url)


def test_public_name_resolving_to_loopback_is_refused(server, monkeypatch):
    monkeypatch.setattr(nlp_fetch, "_resolve", lambda host, port: ["127.0.0.1"])
    with pytest.raises(BlockedAddressError, match="blog.example.com.*127.0.0.1"):
        fetch_article(f"http://blog.example.com:{server.port}/post.html")


def test_any_private_record_refuses_the_name(monkeypatch):
    monkeypatch.setattr(nlp_fetch, "_resolve", lambda host, port: ["93.184.216.34", "10.0.0.7"])
    with pytest.raises(BlockedAddressError, match="10.0.0.7"):
        fetch_article("https://two-records.example.com/post")


def test_connection_is_pinned_to_the_checked_address(server, monkeypatch):
    """The name is resolved once by the check and the request goes to that IP with the
    original Host header (an unresolvable name proves no second lookup happens)."""
    calls = []

    def fake_resolve(host, port):
        calls.append(host)
        return ["127.0.0.1"]

    monkeypatch.setattr(nlp_fetch, "_resolve", fake_resolve)
    server.handler.seen_hosts.clear()
    art = fetch_article(f"http://tea.invalid:{server.port}/post.html", LOCAL)
    assert art.title == "Tea gardens of Darjeeling"
    assert calls == ["tea.invalid"]
    assert server.handler.seen_hosts == [f"tea.invalid:{server.port}"]


def test_redirect_to_loopback_is_refused_on_the_second_hop():
    """127.0.0.2 is allowed explicitly (an intranet host); its redirect to 127.0.0.1 is not."""
    target = _Server("127.0.0.1", {"/secret": _send(body=POST.encode())})
    routes = {"/go": _send(302, headers={"Location": f"{target.base}/secret"}, body=b""),
              "/post.html": _send(body=POST.encode())}
    try:
        entry = _Server("127.0.0.2", routes)
    except OSError:  # pragma: no cover - systems without the 127/8 loopback range
        target.close()
        pytest.skip("cannot bind 127.0.0.2")
    try:
        intranet = FetchSettings(allowed_networks=("127.0.0.2/32",))
        assert fetch_article(entry.base + "/post.html", intranet).title == "Tea gardens of Darjeeling"
        with pytest.raises(BlockedAddressError, match="127.0.0.1"):
            fetch_article(entry.base + "/go", intranet)
        assert target.handler.seen_hosts == []  # the refused hop was never requested
    finally:
        entry.close()
        target.close()


def test_bad_settings_and_sources(tmp_path):
    with pytest.raises(ValueError, match="CIDR"):
        FetchSettings(allowed_networks=("not-a-network",))
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        fetch_article("ftp://example.com/post.html")
    with pytest.raises(FetchError, match="no such file"):
        fetch_article(str(tmp_path / "missing.html"))
    pdf = tmp_path / "post.pdf"
    pdf.write_bytes(b"%PDF-1.7")
    with pytest.raises(UnsupportedContentError, match=r"\.pdf"):
        fetch_article(str(pdf))
    fake = tmp_path / "image.html"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(UnsupportedContentError, match="image/png"):
        fetch_article(str(fake))


def test_local_files_and_file_urls():
    page = PAGES / "sourdough-cp1252.html"
    art = fetch_article(str(page))
    assert art.title == "The Lazy Baker’s Sourdough Starter"
    assert "crème fraîche" in art.text
    assert fetch_article(page.resolve().as_uri()).text == art.text
    md = fetch_article(str(PAGES / "launch-checklist.md"))
    assert "git tag" not in md.text and "indented code" not in md.text


def _self_signed(tmp_path, hostname: str) -> tuple[str, str]:
    """A throwaway certificate and key for ``hostname`` (PEM paths)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{hostname}.pem", tmp_path / f"{hostname}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.mark.parametrize("cert_host, ok", [("blog.test", True), ("other.test", False)])
def test_https_pinned_ip_still_verifies_the_hostname(tmp_path, monkeypatch, cert_host, ok):
    """TLS to the pinned IP sends SNI and checks the certificate against the URL's host name."""
    import ssl

    cert, key = _self_signed(tmp_path, cert_host)
    srv = _Server("127.0.0.1", {"/post.html": _send(body=POST.encode())})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.httpd.socket = ctx.wrap_socket(srv.httpd.socket, server_side=True)
    monkeypatch.setattr(nlp_fetch, "_resolve", lambda host, port: ["127.0.0.1"])
    settings = LOCAL.model_copy(update={"ca_bundle": cert})
    try:
        url = f"https://blog.test:{srv.port}/post.html"
        if ok:
            assert fetch_article(url, settings).title == "Tea gardens of Darjeeling"
        else:
            with pytest.raises(FetchError, match="could not fetch .*(?i:certificate|hostname)"):
                fetch_article(url, settings)
    finally:
        srv.close()


def test_local_file_policy(tmp_path):
    posts = tmp_path / "posts"
    posts.mkdir()
    (posts / "ok.md").write_text("# Title\n\nA paragraph.\n", encoding="utf-8")
    (tmp_path / "secret.txt").write_text("Secret paragraph.\n", encoding="utf-8")
    (posts / "link.txt").symlink_to(tmp_path / "secret.txt")
    confined = FetchSettings(files_root=str(posts))
    assert fetch_article(str(posts / "ok.md"), confined).title == "Title"
    for bad in (tmp_path / "secret.txt", posts / ".." / "secret.txt", posts / "link.txt"):
        with pytest.raises(FetchError, match="outside the folder"):
            fetch_article(str(bad), confined)
    with pytest.raises(FetchError, match="local files are not allowed"):
        fetch_article((posts / "ok.md").as_uri(), FetchSettings(allow_files=False))
