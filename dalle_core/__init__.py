"""Covercraft's in-process DALL·E Mini core (JAX/Flax).

The public face is small: ``Generator`` (load once, compile once, ``generate``), the plain types it
returns and takes, and the table of model variants. Importing the package is cheap; JAX and the
models load when ``Generator`` is first touched.
"""

from dalle_core.config import ModelVariant, get_variant
from dalle_core.types import Candidate, ModelInfo, SamplingSettings

__all__ = ["Candidate", "Generator", "ModelInfo", "ModelVariant", "SamplingSettings", "get_variant"]


def __getattr__(name: str):
    if name == "Generator":
        from dalle_core.generator import Generator

        return Generator
    raise AttributeError(f"module 'dalle_core' has no attribute {name!r}")
