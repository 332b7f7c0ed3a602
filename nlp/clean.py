"""Text normalisation shared by the extractors."""

from __future__ import annotations

import re
import unicodedata

_WS = re.compile(r"\s+")
_ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")


def clean_text(text: str) -> str:
    """Unicode NFC, zero-width and soft hyphens removed, whitespace runs collapsed to one space."""
    text = unicodedata.normalize("NFC", text)
    text = _ZERO_WIDTH.sub("", text)
    return _WS.sub(" ", text).strip()
