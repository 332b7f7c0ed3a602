"""Structured calls to any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp).

Retries on 408/409/429/5xx, connection errors and timeouts, with exponential back-off (and
``Retry-After`` honoured), are the official ``openai`` client's own (``max_retries``); this module
adds what the client does not do:

- JSON-schema structured output (``response_format={"type": "json_schema", ...}``), tolerating
  servers that ignore it (JSON is parsed out of the content, code fences and prose around it
  allowed) and servers that reject it (400 → the call is repeated without ``response_format``);
- pydantic validation, and a malformed answer retried with the validation error in the
  conversation so the model can correct itself;
- token usage accumulated across every request.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


def _env_key() -> SecretStr | None:
    key = os.environ.get("OPENAI_API_KEY")
    return SecretStr(key) if key else None


class LLMSettings(BaseModel):
    """An OpenAI-compatible endpoint.

    base_url: e.g. ``http://localhost:8000/v1`` (vLLM), ``http://localhost:11434/v1`` (Ollama);
    None means OpenAI itself. model: the served model name. api_key: taken from the
    ``OPENAI_API_KEY`` environment variable when not given (never from config files); local
    servers accept any value. timeout: seconds per request; max_retries: client retries with
    back-off on 429/5xx/timeouts; concurrency: chunks in flight at once; top_n_per_chunk: topics
    asked per chunk; fix_attempts: re-asks after a malformed answer; moderation: also ask the
    endpoint's ``/moderations`` about prompts (skipped when the server has none).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str | None = None
    model: str = "gpt-4o-mini"
    api_key: SecretStr | None = Field(default_factory=_env_key, repr=False)
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(3, ge=0)
    concurrency: int = Field(4, ge=1)
    top_n_per_chunk: int = Field(5, ge=1, le=20)
    temperature: float = Field(0.2, ge=0, le=2)
    fix_attempts: int = Field(2, ge=0)
    moderation: bool = True

    @property
    def configured(self) -> bool:
        """True when there is an endpoint to call: a base URL, or OpenAI's with a key."""
        return bool(self.base_url) or self.api_key is not None

    @property
    def label(self) -> str:
        return f"llm:{self.model}"


class Usage:
    """Thread-safe token counter shared by concurrent calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.requests = 0

    def add(self, usage: Any) -> None:
        with self._lock:
            self.requests += 1
            if usage is not None:
                self.prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
                self.completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)

    def as_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "requests": self.requests,
        }


def make_client(settings: LLMSettings):
    """The official client for ``settings`` (its retries and timeout come from the settings)."""
    from openai import OpenAI

    key = settings.api_key.get_secret_value() if settings.api_key else "not-needed"
    return OpenAI(base_url=settings.base_url, api_key=key, timeout=settings.timeout,
                  max_retries=settings.max_retries)


class MalformedAnswer(ValueError):
    """The endpoint kept answering with JSON that does not fit the schema."""


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def parse_json_object(content: str) -> Any:
    """The JSON object in ``content``: bare, inside a ```json fence, or amid prose."""
    content = content.strip()
    try:
        return json.loads(content)
    except json.JSONDecodeError:
        pass
    m = _FENCE.search(content)
    if m:
        try:
            return json.loads(m.group(1))
        except json.JSONDecodeError:
            pass
    start = content.find("{")
    if start >= 0:
        obj, _ = json.JSONDecoder().raw_decode(content[start:])
        return obj
    raise json.JSONDecodeError("no JSON object in the answer", content, 0)


def _strict_schema(model: type[BaseModel]) -> dict[str, Any]:
    """pydantic's JSON schema, made acceptable to OpenAI's strict mode (all properties required,
    no additional properties, no unsupported keywords)."""
    schema = model.model_json_schema()

    def fix(node: Any) -> None:
        # Walks schema nodes only, so a property that happens to be named "title" survives.
        if not isinstance(node, dict):
            return
        for kw in ("title", "default", "minLength", "maxLength", "minimum", "maximum",
                   "minItems", "maxItems"):
            node.pop(kw, None)
        if node.get("type") == "object" and "properties" in node:
            node["required"] = list(node["properties"])
            node["additionalProperties"] = False
            for sub in node["properties"].values():
                fix(sub)
        fix(node.get("items"))
        for sub in node.get("$defs", {}).values():
            fix(sub)
        for key in ("anyOf", "allOf", "oneOf"):
            for sub in node.get(key, []):
                fix(sub)

    fix(schema)
    return schema


class StructuredCaller:
    """Calls one endpoint for answers validated by pydantic models."""

    def __init__(self, settings: LLMSettings, client: Any = None, usage: Usage | None = None):
        self.settings = settings
        self.client = client or make_client(settings)
        self.usage = usage or Usage()
        self._schema_supported = True

    def call(self, messages: list[dict[str, str]], model: type[T], name: str) -> T:
        """Ask until the answer validates as ``model``; raises :class:`MalformedAnswer` after
        ``fix_attempts`` corrections, or the client's error once its own retries are spent."""
        from openai import BadRequestError

        messages = list(messages)
        schema = {"type": "json_schema",
                  "json_schema": {"name": name, "strict": True, "schema": _strict_schema(model)}}
        last_error = ""
        for attempt in range(self.settings.fix_attempts + 1):
            kwargs: dict[str, Any] = {"model": self.settings.model, "messages": messages,
                                      "temperature": self.settings.temperature}
            if self._schema_supported:
                kwargs["response_format"] = schema
            try:
                resp = self.client.chat.completions.create(**kwargs)
            except BadRequestError as err:
                if not self._schema_supported or "response_format" not in str(err).lower() \
                        and "json_schema" not in str(err).lower():
                    raise
                # Older servers reject json_schema: the schema is in the instructions anyway.
                logger.info("endpoint rejects response_format json_schema; asking for plain JSON")
                self._schema_supported = False
                kwargs.pop("response_format")
                resp = self.client.chat.completions.create(**kwargs)
            self.usage.add(getattr(resp, "usage", None))
            content = (resp.choices[0].message.content or "") if resp.choices else ""
            try:
                return model.model_validate(parse_json_object(content))
            except (json.JSONDecodeError, ValidationError, ValueError) as err:
                last_error = _short_error(err)
                logger.info("malformed answer (attempt %d): %s", attempt + 1, last_error)
                messages = messages + [
                    {"role": "assistant", "content": content[:4000]},
                    {"role": "user", "content": (
                        f"That answer is invalid: {last_error}. Reply again with only a JSON "
                        f"object matching this schema: {json.dumps(model.model_json_schema())}")},
                ]
        raise MalformedAnswer(
            f"{self.settings.label} gave no valid answer after {self.settings.fix_attempts + 1} "
            f"tries ({last_error})"
        )


def _short_error(err: Exception) -> str:
    if isinstance(err, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}" for e in err.errors()[:3]]
        return "; ".join(parts)
    return str(err).splitlines()[0][:200]
