"""Read a blog post from an http(s) URL or a local file and extract it into an :class:`Article`.

Network safety (SSRF): every hop's host is resolved once, every resolved address is checked
(loopback, private, link-local, cloud metadata, unspecified, multicast, reserved, any non-global
range are refused unless ``allow_private`` or ``allowed_networks`` says otherwise), and the
connection is then made to that checked address — the URL's host is replaced by the IP while the
``Host`` header and TLS SNI/certificate check keep the original name. So a DNS answer that
changes between the check and the connect (rebinding) cannot redirect the request. Redirects are
followed by hand, with the same check on each hop. Environment proxies are ignored on purpose:
a proxy would make the connection on our behalf and defeat the check.
"""

from __future__ import annotations

import codecs
import ipaddress
import logging
import re
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nlp.errors import BlockedAddressError, FetchError, UnsupportedContentError
from nlp.extract import extract_html, extract_markdown, extract_text
from nlp.models import Article

logger = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "Covercraft/0.1 (blog cover generator; +https://github.com/covercraft)"
_HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
_MD_SUFFIXES = {".md", ".markdown", ".mdown", ".mkd"}
_TEXT_SUFFIXES = {".txt", ".text"}
_HTML_TYPES = {"text/html", "application/xhtml+xml"}
_MD_TYPES = {"text/markdown", "text/x-markdown"}
_TEXT_TYPES = {"text/plain"}
_REDIRECTS = {301, 302, 303, 307, 308}
# Cloud metadata services; all are also link-local/private but get a clearer refusal message.
_METADATA = [
    ipaddress.ip_network("169.254.169.254/32"),
    ipaddress.ip_network("169.254.170.2/32"),
    ipaddress.ip_network("100.100.100.200/32"),
    ipaddress.ip_network("fd00:ec2::254/128"),
]
# Magic numbers of common binary formats served with a misleading text content type.
_MAGIC = {
    b"%PDF": "application/pdf",
    b"\x89PNG": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF8": "image/gif",
    b"PK\x03\x04": "application/zip",
    b"\x1f\x8b": "application/gzip",
    b"RIFF": "image/webp",
}


class FetchSettings(BaseModel):
    """How posts are fetched.

    timeout_connect/timeout_read: seconds per connect / per read; timeout_total: seconds for the
    whole fetch, redirects included (a server trickling bytes cannot hold a run); max_bytes: cap
    on the (decompressed) body;
    max_redirects: hops followed; allow_private: let URLs reach loopback/private addresses (local
    use only); allowed_networks: CIDRs allowed even though they are private (e.g. an intranet
    blog, ``["10.1.2.0/24"]``); user_agent: sent with every request; ca_bundle: a PEM file of
    certificate authorities to trust instead of the system's (an intranet's private CA);
    allow_files: read local paths and file:// URLs at all (a public service should say False, or
    confine them with files_root: a folder that local paths must resolve inside, symlinks
    followed).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout_connect: float = Field(5.0, gt=0)
    timeout_read: float = Field(20.0, gt=0)
    timeout_total: float = Field(60.0, gt=0)
    max_bytes: int = Field(5_000_000, gt=0)
    max_redirects: int = Field(5, ge=0)
    allow_private: bool = False
    allowed_networks: tuple[str, ...] = ()
    user_agent: str = DEFAULT_USER_AGENT
    ca_bundle: str | None = None
    allow_files: bool = True
    files_root: str | None = None

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as err:
                raise ValueError(f"allowed_networks: {net!r} is not a CIDR such as 10.0.0.0/8") from err
        return v


# ---------------------------------------------------------------------------------------------
# Address checks


def _resolve(host: str, port: int) -> list[str]:
    """All addresses ``host`` resolves to (tests monkeypatch this to fake DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def blocked_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a connection to ``ip`` is refused by default, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in _METADATA):
        return "a cloud metadata address"
    checks = (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    )
    for attr, reason in checks:
        if getattr(ip, attr):
            return reason
    if not ip.is_global:
        return "a non-public address"
    return None


def check_host(host: str, port: int, settings: FetchSettings) -> str:
    """Resolve ``host`` and return the address to connect to; raise if any address is refused.

    Every resolved address must pass: a name with one public and one private record is refused,
    since the connection could use either.
    """
    try:
        addrs = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addrs = [ipaddress.ip_address(a.split("%")[0]) for a in _resolve(host, port)]
        except socket.gaierror as err:
            raise FetchError(
                f"could not resolve host {host!r} ({err.strerror}): check the URL and your network",
                transient=err.errno == socket.EAI_AGAIN,
            ) from err
    if not addrs:
        raise FetchError(f"host {host!r} has no address: check the URL")
    allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allowed_networks]
    for ip in addrs:
        reason = blocked_reason(ip)
        if reason is None or settings.allow_private:
            continue
        if any(ip.version == net.version and ip in net for net in allowed):
            continue
        raise BlockedAddressError(
            f"refusing to fetch {host!r}: it resolves to {ip}, {reason}; set fetch.allow_private "
            "(or list the network in allowed_networks) only if you trust this URL"
        )
    return str(addrs[0])


# ---------------------------------------------------------------------------------------------
# Charset handling

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^<\?xml[^>]+encoding\s*=\s*["']([A-Za-z0-9_.:-]+)""", re.I)
# WHATWG Encoding Standard: browsers decode these labels as windows-1252, and so do pages.
_AS_CP1252 = {"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "ascii", "us-ascii", "cp819"}


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    if label in _AS_CP1252:
        return "cp1252"
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_bytes(data: bytes, declared: str | None = None, *, html: bool = True) -> tuple[str, str]:
    """Decode a document; returns ``(text, encoding used)``.

    Order: byte-order mark, the declared charset (HTTP header), ``<meta charset>`` / XML
    declaration in the first 4 KB, strict UTF-8, charset-normalizer detection, then windows-1252
    with replacement characters. A declared charset that does not decode the bytes is not
    trusted (servers often claim UTF-8 for Windows-1252 pages).
    """
    for bom, enc in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"),
                     (codecs.BOM_UTF16_BE, "utf-16-be")):
        if data.startswith(bom):
            return data[len(bom):].decode(enc, errors="replace"), enc
    candidates: list[str] = []
    if html:
        head = data[:4096]
        m = _META_CHARSET.search(head) or _XML_ENCODING.search(head)
        if m:
            meta = _codec(m.group(1).decode("ascii", "ignore"))
            # A meta tag cannot really say UTF-16: the bytes it is written in are ASCII.
            if meta and not meta.startswith("utf-16"):
                candidates.append(meta)
    header = _codec(declared)
    if header:
        candidates.insert(0, header)
    candidates.append("utf-8")
    for enc in dict.fromkeys(candidates):
        try:
            return data.decode(enc), enc
        except UnicodeDecodeError:
            logger.debug("declared charset %s does not decode the document", enc)
    try:
        from charset_normalizer import from_bytes

        best = from_bytes(data).best()
        if best is not None and best.encoding:
            return str(best), best.encoding
    except ImportError:  # pragma: no cover - charset-normalizer ships with requests/httpx deps
        pass
    return data.decode("cp1252", errors="replace"), "cp1252"


# ---------------------------------------------------------------------------------------------
# Sources


def _kind_for(content_type: str, url_path: str, body: bytes, source: str) -> str:
    """"html", "markdown" or "text" for a response; raise for anything else."""
    for magic, mtype in _MAGIC.items():
        if body.startswith(magic):
            raise UnsupportedContentError(
                f"{source} is {mtype}, not a web page or text: pass the URL or file of the post itself"
            )
    suffix = Path(unquote(url_path)).suffix.lower()
    if content_type in _MD_TYPES or (content_type in _TEXT_TYPES | {""} and suffix in _MD_SUFFIXES):
        return "markdown"
    if content_type in _HTML_TYPES:
        return "html"
    if content_type in _TEXT_TYPES:
        return "text"
    if not content_type:
        head = body[:1024].lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")):
            return "html"
        if b"\x00" not in body[:1024]:
            return "text"
        raise UnsupportedContentError(
            f"{source} has no content type and looks binary: pass the URL of an HTML page or a text file"
        )
    raise UnsupportedContentError(
        f"{source} is {content_type}, not an HTML page or Markdown/text: pass the URL of the post itself"
    )


def _extract(kind: str, data: bytes, charset: str | None, source: str) -> Article:
    text, enc = decode_bytes(data, charset, html=kind == "html")
    logger.debug("decoded %s as %s", source, enc)
    if kind == "html":
        return extract_html(text, source)
    if kind == "markdown":
        return extract_markdown(text, source)
    return extract_text(text, source)


def _read_file(path: Path, source: str, settings: FetchSettings) -> Article:
    if not settings.allow_files:
        raise FetchError(f"local files are not allowed here ({source}): pass an http(s) URL")
    if settings.files_root is not None:
        root = Path(settings.files_root).expanduser().resolve()
        if not path.expanduser().resolve().is_relative_to(root):
            raise FetchError(f"{source} is outside the folder posts may be read from ({root})")
    if not path.is_file():
        raise FetchError(
            f"no such file: {path}; pass an http(s) URL or the path of a .html, .md or .txt file"
        )
    suffix = path.suffix.lower()
    if suffix in _HTML_SUFFIXES:
        kind = "html"
    elif suffix in _MD_SUFFIXES:
        kind = "markdown"
    elif suffix in _TEXT_SUFFIXES:
        kind = "text"
    else:
        raise UnsupportedContentError(
            f"{path} has type {suffix or '(no suffix)'}: pass a .html, .htm, .md, .markdown or .txt file"
        )
    size = path.stat().st_size
    if size > settings.max_bytes:
        raise FetchError(
            f"{path} is {size} bytes, over the {settings.max_bytes}-byte limit; raise fetch.max_bytes"
        )
    data = path.read_bytes()
    _kind_for({"html": "text/html", "markdown": "text/markdown", "text": "text/plain"}[kind],
              path.name, data, str(path))
    return _extract(kind, data, None, source)


def _content_type(resp: httpx.Response) -> tuple[str, str | None]:
    raw = resp.headers.get("content-type", "")
    mtype = raw.split(";")[0].strip().lower()
    m = re.search(r"charset\s*=\s*[\"']?([^;\"'\s]+)", raw, re.I)
    return mtype, (m.group(1) if m else None)


def _pinned(url: httpx.URL, ip: str) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The URL with its host replaced by the checked IP, plus Host header and TLS SNI name."""
    host = url.host
    default_port = {"http": 80, "https": 443}[url.scheme]
    name = f"[{host}]" if ":" in host else host
    host_header = name if url.port in (None, default_port) else f"{name}:{url.port}"
    try:
        ipaddress.ip_address(host)
        ext: dict[str, str] = {}
    except ValueError:
        # TLS must still name (and verify the certificate of) the host, not the IP.
        ext = {"sni_hostname": host}
    return url.copy_with(host=ip), {"Host": host_header}, ext


@dataclass(frozen=True)
class Download:
    """A body fetched over http(s): the final URL after redirects, its media type and charset."""

    url: str
    media_type: str
    charset: str | None
    data: bytes


_ARTICLE_ACCEPT = "text/html,application/xhtml+xml,text/markdown;q=0.9,text/plain;q=0.8,*/*;q=0.1"


def download(url: str, settings: FetchSettings, *, media_types: set[str] | None = None,
             accept: str = _ARTICLE_ACCEPT, what: str = "an HTML page or Markdown/text") -> Download:
    """GET ``url`` with the address check on every hop (see the module docstring).

    ``media_types``: the types accepted; another declared type is refused before its body is read
    (``what`` names what was expected, for the message). Limits: ``settings.max_bytes``,
    ``timeout_total``, ``max_redirects``. Raises :class:`FetchError` (``transient`` for timeouts,
    connection trouble, 408/425/429 and 5xx), :class:`BlockedAddressError` or
    :class:`UnsupportedContentError` with a one-line explanation.
    """
    timeout = httpx.Timeout(
        connect=settings.timeout_connect, read=settings.timeout_read,
        write=settings.timeout_read, pool=settings.timeout_connect,
    )
    headers = {"User-Agent": settings.user_agent, "Accept": accept}
    current = url
    deadline = time.monotonic() + settings.timeout_total
    verify: bool | ssl.SSLContext = True
    if settings.ca_bundle:
        try:
            verify = ssl.create_default_context(cafile=settings.ca_bundle)
        except (OSError, ssl.SSLError) as err:
            raise FetchError(f"cannot read fetch.ca_bundle {settings.ca_bundle!r}: {err}") from err
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, headers=headers,
                      verify=verify) as client:
        for _hop in range(settings.max_redirects + 1):
            try:
                target = httpx.URL(current)
            except httpx.InvalidURL as err:
                raise FetchError(f"invalid URL {current!r}: {err}") from err
            if target.scheme not in ("http", "https") or not target.host:
                raise FetchError(
                    f"refusing to follow {current!r}: only http(s) URLs with a host are fetched"
                )
            port = target.port or (443 if target.scheme == "https" else 80)
            ip = check_host(target.host, port, settings)
            pinned, host_header, ext = _pinned(target, ip)
            try:
                with client.stream("GET", pinned, headers=host_header, extensions=ext) as resp:
                    if resp.status_code in _REDIRECTS and "location" in resp.headers:
                        nxt = urljoin(str(target), resp.headers["location"])
                        logger.info("redirect %d: %s -> %s", resp.status_code, current, nxt)
                        current = nxt
                        continue
                    if resp.status_code >= 400:
                        transient = resp.status_code in (408, 425, 429) or resp.status_code >= 500
                        raise FetchError(
                            f"{current} answered HTTP {resp.status_code} {resp.reason_phrase}: "
                            + ("try again later" if transient else "check the URL"),
                            transient=transient, status=resp.status_code,
                        )
                    mtype, charset = _content_type(resp)
                    # Refuse by type before reading a byte of a PDF or an image.
                    if mtype and media_types is not None and mtype not in media_types:
                        raise UnsupportedContentError(
                            f"{current} is {mtype}, not {what}: pass the URL of the post itself"
                        )
                    length = resp.headers.get("content-length")
                    if length and length.isdigit() and int(length) > settings.max_bytes:
                        raise FetchError(
                            f"{current} is {length} bytes, over the {settings.max_bytes}-byte "
                            "limit; raise fetch.max_bytes if the post is really that large"
                        )
                    body = bytearray()
                    for part in resp.iter_bytes():
                        body += part
                        if time.monotonic() > deadline:
                            raise FetchError(
                                f"{current} took longer than {settings.timeout_total:g} s in total: "
                                "try again or raise fetch.timeout_total", transient=True,
                            )
                        if len(body) > settings.max_bytes:
                            raise FetchError(
                                f"{current} is larger than the {settings.max_bytes}-byte limit; "
                                "raise fetch.max_bytes if the post is really that large"
                            )
            except httpx.TimeoutException as err:
                raise FetchError(
                    f"timed out fetching {current} ({type(err).__name__}): try again or raise "
                    "fetch.timeout_connect/timeout_read", transient=True,
                ) from err
            except httpx.HTTPError as err:
                raise FetchError(
                    f"could not fetch {current}: {type(err).__name__}: {err}; check the URL and "
                    "that the server is up", transient=True,
                ) from err
            return Download(current, mtype, charset, bytes(body))
    raise FetchError(
        f"{url} redirected more than {settings.max_redirects} times; pass the final URL of the post"
    )


def _fetch_url(url: str, settings: FetchSettings) -> Article:
    got = download(url, settings, media_types=_HTML_TYPES | _MD_TYPES | _TEXT_TYPES)
    kind = _kind_for(got.media_type, httpx.URL(got.url).path, got.data, got.url)
    return _extract(kind, got.data, got.charset, got.url)


def fetch_article(source: str, settings: FetchSettings | None = None) -> Article:
    """Fetch and extract a post.

    ``source``: an http(s) URL, a ``file://`` URL or a local path to a ``.html``/``.htm``/
    ``.md``/``.markdown``/``.txt`` file. Raises :class:`FetchError` (or a subclass:
    :class:`UnsupportedContentError`, :class:`BlockedAddressError`,
    :class:`~nlp.errors.EmptyArticleError`) with a one-line explanation.
    """
    settings = settings or FetchSettings()
    source = source.strip()
    if not source:
        raise FetchError("no source given: pass an http(s) URL or the path of a .html/.md/.txt file")
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_url(source, settings)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(f"{source}: file URLs must be local (file:///path/to/post.html)")
        path = Path(url2pathname(unquote(parts.path)))
        return _read_file(path, source, settings)
    # One-letter "schemes" are Windows drive letters.
    if scheme and len(scheme) > 1:
        raise FetchError(
            f"unsupported URL scheme {scheme!r} in {source!r}: pass an http(s) URL or a file path"
        )
    path = Path(source).expanduser()
    return _read_file(path, str(path), settings)
