"""Where token-sampling progress goes.

The generate task reports ``(done, total)`` tokens; the CLI installs a terminal progress bar, and
everywhere else (served deployments, the HTTP service) progress goes to the run logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager

ProgressFn = Callable[[int, int], None]

_global: list[Callable[[str], ProgressFn]] = []


@contextmanager
def reporter(factory: Callable[[str], ProgressFn]):
    """Install ``factory(label) -> progress_fn`` for stages started inside this block (any thread)."""
    _global.append(factory)
    try:
        yield
    finally:
        _global.remove(factory)


def logging_progress(logger: logging.Logger | logging.LoggerAdapter, label: str, every: float = 0.25) -> ProgressFn:
    """A progress function that logs at every ``every`` fraction of the work."""
    state = {"next": every}

    def update(done: int, total: int) -> None:
        frac = done / max(total, 1)
        if frac >= state["next"] or done == total:
            logger.info("%s: %d/%d tokens (%.0f%%)", label, done, total, 100 * frac)
            while state["next"] <= frac:
                state["next"] += every

    return update


def progress_for(label: str, logger) -> ProgressFn:
    """The installed reporter's progress function, or one that logs."""
    if _global:
        return _global[-1](label)
    return logging_progress(logger, label)
