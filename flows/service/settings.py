"""Typed service settings: ``configs/service.yaml`` < ``--config FILE`` < ``COVERCRAFT_SERVICE__*`` env.

A config file may hold the ``service:`` section next to the pipeline's sections (``model``,
``sampling``, ``prompt``, ...); ``load_service_config`` splits them so each half is validated by
its own model and both keep the same layering (file < env < flags).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flows.settings import (
    ConfigError,
    Settings,
    _read_yaml,
    deep_merge,
    env_overrides,
    load_settings,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QueueSettings(_Section):
    max_pending: int = Field(32, ge=1, le=10_000)
    max_batch: int = Field(8, ge=1, le=256)
    batch_wait_ms: float = Field(15.0, ge=0.0, le=5_000.0)
    fixed_batch: bool = False
    request_timeout: float = Field(120.0, gt=0.0)


class ImageStoreSettings(_Section):
    url_ttl: float = Field(3600.0, gt=0.0)
    store_max_bytes: int = Field(256 * 2**20, ge=2**20)


class UploadSettings(_Section):
    max_bytes: int = Field(4 * 2**20, ge=1024)
    max_pixels: int = Field(4096 * 4096, ge=64 * 64)


class HookSettings(_Section):
    default_mode: Literal["sync", "async"] = "sync"
    deployment: str = "blog-to-images/covercraft"
    spool_dir: Path = Path("covercraft-hook-posts")
    cache_size: int = Field(256, ge=0)
    cache_max_bytes: int = Field(256 * 2**20, ge=0)
    max_text_chars: int = Field(200_000, ge=100)


class ServiceSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    public_url: str | None = None
    api_keys_env: str = "COVERCRAFT_API_KEYS"
    require_auth: bool = True
    model_id: str = "covercraft-dalle-mini"
    model_aliases: list[str] = ["dall-e-2", "dall-e-3"]
    shutdown_timeout: float = Field(60.0, ge=0.0)
    queue: QueueSettings = QueueSettings()
    images: ImageStoreSettings = ImageStoreSettings()
    uploads: UploadSettings = UploadSettings()
    variation_keep: float = Field(0.5, ge=0.0, le=1.0)
    hook: HookSettings = HookSettings()

    def api_keys(self, environ: Mapping[str, str] | None = None) -> frozenset[str]:
        """Accepted Bearer keys, from the environment variable named by ``api_keys_env``."""
        environ = os.environ if environ is None else environ
        raw = environ.get(self.api_keys_env, "")
        return frozenset(k.strip() for k in raw.split(",") if k.strip())


def service_config_text() -> str:
    return resources.files("configs").joinpath("service.yaml").read_text(encoding="utf-8")


def _describe(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    key = ".".join(["service", *(str(p) for p in first["loc"])])
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}' ({origin}); check the spelling against configs/service.yaml"
    return f"invalid config value for '{key}': {first['msg']} ({origin})"


def load_service_config(
    config_file: str | os.PathLike | None = None,
    service_overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[ServiceSettings, Settings]:
    """The service's settings and the pipeline settings it generates with.

    ``config_file`` may mix a ``service:`` section with pipeline sections; ``service_overrides``
    (command-line flags) win over everything else.
    """
    environ = os.environ if environ is None else environ
    service = dict(_read_yaml(service_config_text(), "configs/service.yaml").get("service") or {})
    origin = "configs/service.yaml"
    pipeline: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = _read_yaml(path.read_text(encoding="utf-8"), str(path))
        mine = data.pop("service", None) or {}
        if not isinstance(mine, Mapping):
            raise ConfigError(f"{path}: 'service' must be a mapping of service settings")
        service = deep_merge(service, mine)
        pipeline = data
        origin = str(path)
    env = env_overrides(environ)
    env_service = env.pop("service", None) or {}
    if env_service:
        service = deep_merge(service, env_service)
        origin += " + COVERCRAFT_SERVICE__* environment"
    if service_overrides:
        service = deep_merge(service, service_overrides)
    try:
        svc = ServiceSettings.model_validate(service)
    except ValidationError as err:
        raise ConfigError(_describe(err, origin)) from None
    # The file's pipeline sections go in as overrides under the environment layer, so the order
    # stays default.yaml < file < env (the env layer is merged here, not again by load_settings).
    settings = load_settings(None, deep_merge(pipeline, env), environ={})
    return svc, settings
