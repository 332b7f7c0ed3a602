"""In-memory store behind the image URLs the API returns: unguessable ids, expiry, a byte budget."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredImage:
    data: bytes
    media_type: str
    expires_at: float  # time.time() seconds


class ImageStore:
    """Images by id until they expire (``ttl`` seconds) or the byte budget pushes them out.

    Ids are 32 random bytes, so a URL is the capability to read one image (like OpenAI's signed
    URLs) and the file route needs no API key.
    """

    def __init__(self, ttl: float, max_bytes: int, clock: Callable[[], float] = time.time):
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._clock = clock
        self._items: OrderedDict[str, StoredImage] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, data: bytes, media_type: str = "image/png") -> tuple[str, float]:
        """Store ``data``; returns (id, expires_at)."""
        image_id = secrets.token_urlsafe(32)
        expires = self._clock() + self.ttl
        with self._lock:
            self._sweep()
            while self._items and self._bytes + len(data) > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.data)
            self._items[image_id] = StoredImage(data, media_type, expires)
            self._bytes += len(data)
        return image_id, expires

    def get(self, image_id: str) -> StoredImage | None:
        with self._lock:
            item = self._items.get(image_id)
            if item is None:
                return None
            if item.expires_at <= self._clock():
                del self._items[image_id]
                self._bytes -= len(item.data)
                return None
            return item

    def _sweep(self) -> None:
        now = self._clock()
        # Insertion order is expiry order (one ttl for all), so expired items sit at the front.
        while self._items:
            key, item = next(iter(self._items.items()))
            if item.expires_at > now:
                break
            del self._items[key]
            self._bytes -= len(item.data)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
