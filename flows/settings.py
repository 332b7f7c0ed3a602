"""Typed settings: ``configs/default.yaml`` < ``--config FILE`` < ``COVERCRAFT_*`` env < CLI flags.

Pydantic at the boundary (STYLE 9): every field is documented in configs/default.yaml, unknown keys
are refused with the key's dotted path, and secrets are read from the environment only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "COVERCRAFT_"


class ConfigError(ValueError):
    """The configuration is invalid; the message says which key and how to fix it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSettings(_Section):
    source: str = "embedded"
    dalle: str | None = None
    vqgan: str | None = None
    clip: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    clip_view_shift: float = Field(0.375, ge=0.0, le=0.9)
    clip_drop_words: tuple[str, ...] = ("small", "little", "tiny", "large", "big")


class SamplingConfig(_Section):
    candidates: int = Field(4, ge=1, le=64)
    seed: int = Field(0, ge=0)
    condition_scale: float = Field(1.0, ge=0.0, le=100.0)
    top_k: int | None = Field(2, ge=0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0, le=10.0)


class TextSettings(_Section):
    chunk_tokens: int = Field(400, ge=16, le=8192)
    chunk_overlap: int = Field(50, ge=0)
    top_topics: int = Field(6, ge=1, le=50)


class FetchConfig(_Section):
    timeout_connect: float = Field(5.0, gt=0)
    timeout_read: float = Field(20.0, gt=0)
    max_bytes: int = Field(5_000_000, ge=1024)
    max_redirects: int = Field(5, ge=0, le=20)
    allow_private: bool = False


class LLMConfig(_Section):
    base_url: str | None = None
    model: str = "gpt-4o-mini"
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    concurrency: int = Field(4, ge=1, le=64)

    @property
    def api_key(self) -> str | None:
        # Secrets only from the environment, never from config files.
        return os.environ.get("OPENAI_API_KEY")


class PromptConfig(_Section):
    style: str = "plain"  # configs/default.yaml: the embedded model knows no style words
    negative_words: list[str] = []
    blocklist: list[str] = []


class OutputSettings(_Section):
    dir: Path = Path("covercraft-output")
    upscale: bool = False
    upscaler: str | None = None
    platforms: list[str] = []
    title_overlay: bool = False

    @field_validator("platforms", mode="before")
    @classmethod
    def _known_platforms(cls, value: Any) -> Any:
        """Preset names of configs/platforms.yaml, aliases resolved; unknown names are refused
        here, when the settings load, before any work starts."""
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            return value  # pydantic says what is wrong with the type
        from dalle_core.cover import load_platforms

        return load_platforms().resolve(value)


class Settings(_Section):
    model: ModelSettings = ModelSettings()
    sampling: SamplingConfig = SamplingConfig()
    text: TextSettings = TextSettings()
    fetch: FetchConfig = FetchConfig()
    llm: LLMConfig = LLMConfig()
    prompt: PromptConfig = PromptConfig()
    output: OutputSettings = OutputSettings()


def default_config_text() -> str:
    return resources.files("configs").joinpath("default.yaml").read_text(encoding="utf-8")


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "syntax error"
        raise ConfigError(f"{where}: not valid YAML{at} ({problem})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections at the top level")
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``COVERCRAFT_SAMPLING__SEED=7`` → ``{"sampling": {"seed": 7}}`` (values parsed as YAML scalars)."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _holds(data: Mapping[str, Any], path: tuple) -> bool:
    node: Any = data
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _describe(err: ValidationError, layers: list[tuple[str, Mapping[str, Any]]],
              labels: Mapping[tuple[str, ...], str] | None = None) -> str:
    """One line for the first error, naming where the bad key came from: the highest layer that
    sets it (``labels`` can name single keys, e.g. a run parameter)."""
    first = err.errors()[0]
    path = tuple(str(p) for p in first["loc"])
    key = ".".join(path)
    origin = layers[0][0]
    # The highest layer that sets the key (or, for an item of a list, the list) is where it came from.
    shortest = min(len(path), 2)
    for label, data in layers:
        if any(_holds(data, path[:n]) for n in range(shortest, len(path) + 1)):
            origin = label
    for n in range(len(path), 0, -1):
        if labels and path[:n] in labels:
            origin = labels[path[:n]]
            break
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}' ({origin}); check the spelling against configs/default.yaml"
    return f"invalid config value for '{key}': {first['msg']} ({origin})"


def load_settings(
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    overrides_label: str = "command-line flags",
    labels: Mapping[tuple[str, ...], str] | None = None,
) -> Settings:
    """Build the typed settings from the layers, lowest priority first.

    An invalid value is reported with the layer it came from (``overrides_label`` for
    ``overrides``; ``labels`` names single keys more precisely, e.g. a flow run's parameter).
    """
    data = _read_yaml(default_config_text(), "configs/default.yaml")
    layers: list[tuple[str, Mapping[str, Any]]] = [("configs/default.yaml", data)]
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        layers.append((str(path), _read_yaml(path.read_text(encoding="utf-8"), str(path))))
    env = env_overrides(environ)
    if env:
        layers.append(("COVERCRAFT_* environment", env))
    if overrides:
        layers.append((overrides_label, overrides))
    for _, layer in layers[1:]:
        data = deep_merge(data, layer)
    try:
        return Settings.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_describe(err, layers, labels)) from None
