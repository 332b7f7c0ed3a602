"""Errors raised by the ``nlp`` package.

Every message is one line a user can act on: what went wrong and how to fix it. Flows catch
:class:`NlpError` to stop a run with that line; :attr:`FetchError.transient` tells a retry policy
whether trying again could help (a timeout) or not (a 404, a PDF, a refused address).
"""

from __future__ import annotations


class NlpError(Exception):
    """Base class: ``str(err)`` is a one-line, user-facing explanation with the fix."""


class FetchError(NlpError):
    """The post could not be read (network, HTTP status, size limit, missing file).

    ``transient`` is True for failures that may succeed on a retry (timeouts, connection resets,
    HTTP 429/5xx) and False for permanent ones.
    """

    def __init__(self, message: str, *, transient: bool = False, status: int | None = None):
        super().__init__(message)
        self.transient = transient
        self.status = status


class UnsupportedContentError(FetchError):
    """The source is not HTML, Markdown or plain text (an image, a PDF, a binary download)."""


class EmptyArticleError(FetchError):
    """The source was read but no article text could be extracted from it."""


class BlockedAddressError(FetchError):
    """The URL (or a redirect) points at a loopback/private/link-local/metadata address."""


class ModerationError(NlpError):
    """A prompt was refused by the blocklist or the endpoint's moderation; the message gives why."""

    def __init__(self, message: str, *, reason: str = "", matched: list[str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.matched = list(matched or [])
