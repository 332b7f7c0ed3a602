"""LLM topics, prompts, moderation and optimisation through the real ``openai`` client, over real
HTTP, against a scripted OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nlp.errors import ModerationError
from nlp.models import Chunk, ImagePrompt, Topic
from nlp.prompt import PromptSettings, build_prompt, moderate, optimise_prompt
from nlp.topics import LLMSettings, extract_topics

CATEGORIES = ["harassment", "hate", "self-harm", "sexual", "sexual/minors", "violence",
              "violence/graphic", "illicit"]


def _topics_for(text: str) -> list[dict]:
    """A deterministic stand-in for a model: the chunk's three longest distinct words."""
    words = sorted({w.lower() for w in re.findall(r"[A-Za-z]{6,}", text)}, key=lambda w: (-len(w), w))
    return [{"phrase": w, "salience": round(0.9 - 0.2 * i, 2)} for i, w in enumerate(words[:3])]


class FakeOpenAI:
    """Scripted server. ``script`` holds behaviours consumed one per chat request (then "good"):
    "good", "fenced", ("malformed", text), ("status", code), ("sleep", seconds),
    "reject_schema" (400 whenever response_format is sent), ("scene", dict), ("revision", text).
    """

    def __init__(self):
        self.script: list = []
        self.requests: list[dict] = []
        self.moderation: dict | None = None  # None → 404 (no /moderations), else the result
        self.reject_schema = False
        self.delay = 0.0
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, obj, headers=None):
                body = json.dumps(obj).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if self.path.endswith("/moderations"):
                    if fake.moderation is None:
                        return self._json(404, {"error": {"message": "not found"}})
                    flagged = fake.moderation
                    return self._json(200, {"id": "modr-1", "model": "fake-mod", "results": [{
                        "flagged": bool(flagged),
                        "categories": {c: c in flagged for c in CATEGORIES},
                        "category_scores": {c: 0.9 if c in flagged else 0.01 for c in CATEGORIES},
                    }]})
                with fake.lock:
                    fake.requests.append(body)
                    step = fake.script.pop(0) if fake.script else "good"
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    self._chat(body, step)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _chat(self, body, step):
                if fake.delay:
                    time.sleep(fake.delay)
                if (fake.reject_schema or step == "reject_schema") and "response_format" in body:
                    fake.reject_schema = True
                    return self._json(400, {"error": {"message": "response_format json_schema is not supported",
                                                      "type": "invalid_request_error"}})
                if isinstance(step, tuple) and step[0] == "status":
                    return self._json(step[1], {"error": {"message": f"scripted {step[1]}"}})
                if isinstance(step, tuple) and step[0] == "sleep":
                    time.sleep(step[1])
                    step = "good"
                user = body["messages"][1]["content"]
                if isinstance(step, tuple) and step[0] == "malformed":
                    content = step[1]
                elif isinstance(step, tuple) and step[0] == "scene":
                    content = json.dumps(step[1])
                elif isinstance(step, tuple) and step[0] == "revision":
                    content = json.dumps({"prompt": step[1]})
                else:
                    content = json.dumps({"topics": _topics_for(user.split("Text:", 1)[-1])})
                    if step == "fenced":
                        content = f"Here you go:\n```json\n{content}\n```\nHope this helps."
                self._json(200, {
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def settings(self, **kw) -> LLMSettings:
        opts = {"base_url": self.base_url, "model": "fake-model", "api_key": "test-key",
                "timeout": 5.0, "max_retries": 2, "concurrency": 2}
        opts.update(kw)
        return LLMSettings(**opts)


@pytest.fixture
def llm_server():
    srv = FakeOpenAI()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


CHUNKS = [
    Chunk(index=0, heading=None, text="Sourdough starters need flour, water and patience.",
          n_tokens=10, start_char=0, end_char=50, title="Sourdough at home"),
    Chunk(index=1, heading="Baking", text="Bake the loaf in a preheated Dutch oven for crackling crust.",
          n_tokens=12, start_char=52, end_char=110, title="Sourdough at home"),
    Chunk(index=2, heading="Storage", text="Refrigerate the starter between weekly feedings.",
          n_tokens=8, start_char=112, end_char=160, title="Sourdough at home"),
]


def test_good_answers(llm_server):
    llm_server.delay = 0.4  # long enough for requests to overlap
    result = extract_topics(CHUNKS, llm_server.settings(concurrency=2))
    assert result.extractor == "llm:fake-model" and result.errors == []
    assert [t.phrase for t in result.topics if t.chunk_indices == [1]] == ["crackling", "preheated"]
    assert all(t.extractor == "llm:fake-model" for t in result.topics)
    assert result.usage == {"prompt_tokens": 300, "completion_tokens": 60, "total_tokens": 360, "requests": 3}
    assert llm_server.max_in_flight == 2  # concurrent, and bounded by concurrency
    # requests arrive in any order (concurrency): find the first chunk's
    req = next(r for r in llm_server.requests if "Sourdough starters need" in r["messages"][1]["content"])
    fmt = req["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"]["required"] == ["topics"]
    assert "Section: (none)" in req["messages"][1]["content"]
    assert "Sourdough at home" in req["messages"][1]["content"]


def test_fenced_json_from_a_server_that_ignores_the_schema(llm_server):
    llm_server.script = ["fenced"]
    result = extract_topics(CHUNKS[:1], llm_server.settings())
    assert result.extractor == "llm:fake-model"
    assert result.topics[0].phrase == "sourdough"


def test_malformed_then_good_retries_with_the_error(llm_server):
    llm_server.script = [("malformed", '{"topics": [{"phrase": "x"}]}')]
    result = extract_topics(CHUNKS[:1], llm_server.settings())
    assert result.extractor == "llm:fake-model" and result.errors == []
    assert len(llm_server.requests) == 2
    retry = llm_server.requests[1]["messages"]
    assert retry[2] == {"role": "assistant", "content": '{"topics": [{"phrase": "x"}]}'}
    assert "invalid" in retry[3]["content"] and "salience" in retry[3]["content"]
    assert result.usage["requests"] == 2


def test_always_malformed_falls_back_offline(llm_server):
    llm_server.script = [("malformed", "I cannot do JSON, sorry.")] * 3
    result = extract_topics(CHUNKS[:1], llm_server.settings(fix_attempts=2))
    assert result.extractor == "offline"
    assert result.topics and all(t.extractor == "offline" for t in result.topics)
    assert "MalformedAnswer" in result.errors[0]
    assert len(llm_server.requests) == 3


def test_429_then_500_then_success(llm_server):
    llm_server.script = [("status", 429), ("status", 500)]
    result = extract_topics(CHUNKS[:1], llm_server.settings(max_retries=3))
    assert result.extractor == "llm:fake-model" and result.errors == []
    assert len(llm_server.requests) == 3


def test_server_errors_exhaust_retries_then_offline(llm_server):
    llm_server.script = [("status", 500)] * 2
    result = extract_topics(CHUNKS[:1], llm_server.settings(max_retries=1))
    assert result.extractor == "offline"
    assert "InternalServerError" in result.errors[0]


def test_mixed_result_when_one_chunk_fails(llm_server):
    llm_server.script = [("status", 400)]  # not retried by the client; only this chunk
    result = extract_topics(CHUNKS, llm_server.settings(concurrency=1))
    assert result.extractor == "llm:fake-model"
    by_chunk = {t.chunk_indices[0]: t.extractor for t in result.topics}
    assert by_chunk == {0: "offline", 1: "llm:fake-model", 2: "llm:fake-model"}
    assert len(result.errors) == 1 and result.errors[0].startswith("chunk 0: BadRequestError")


def test_timeout_falls_back_and_skips_remaining_chunks(llm_server):
    llm_server.script = [("sleep", 3.0)] * 4
    t0 = time.perf_counter()
    result = extract_topics(CHUNKS, llm_server.settings(timeout=0.4, max_retries=1, concurrency=1))
    elapsed = time.perf_counter() - t0
    assert result.extractor == "offline"
    assert "APITimeoutError" in result.errors[0]
    assert "skipped the endpoint" in result.errors[-1]
    assert len(llm_server.requests) == 2  # one chunk, one retry; the others never called
    assert elapsed < 3.0


def test_endpoint_down_falls_back_offline():
    down = LLMSettings(base_url="http://127.0.0.1:9/v1", model="m", api_key="k", max_retries=1,
                       timeout=2)
    result = extract_topics(CHUNKS, down)
    assert result.extractor == "offline" and result.topics
    assert "APIConnectionError" in result.errors[0]


def test_server_rejecting_json_schema(llm_server):
    llm_server.script = ["reject_schema"]
    result = extract_topics(CHUNKS[:2], llm_server.settings(concurrency=1))
    assert result.extractor == "llm:fake-model" and result.errors == []
    assert "response_format" in llm_server.requests[0]
    assert all("response_format" not in r for r in llm_server.requests[1:])


def test_unconfigured_settings_and_key_from_env(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert not LLMSettings().configured
    result = extract_topics(CHUNKS, LLMSettings())
    assert result.extractor == "offline" and result.usage == {}
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-value")
    s = LLMSettings()
    assert s.configured and s.api_key.get_secret_value() == "sk-secret-value"
    assert "sk-secret" not in repr(s) and "sk-secret" not in s.model_dump_json()


# --- prompts, moderation, optimisation ----------------------------------------------------------

TOPICS = [Topic(phrase="sourdough starter", score=1.0, chunk_indices=[0]),
          Topic(phrase="dutch oven", score=0.7, chunk_indices=[1]),
          Topic(phrase="crackling crust", score=0.5, chunk_indices=[1])]


def test_llm_prompt_is_a_concrete_scene(llm_server):
    llm_server.script = [("scene", {"subject": "a jar of bubbling sourdough starter",
                                     "setting": "rustic kitchen counter",
                                     "details": ["flour dust", "crusty loaf"], "mood": "warm morning light"})]
    p = build_prompt(TOPICS, "Sourdough at home", PromptSettings(style="photo", negative_words=["people"]),
                     llm_server.settings())
    assert p.source == "llm" and p.usage["requests"] == 1 and p.usage["total_tokens"] == 120
    assert p.text.startswith("a jar of bubbling sourdough starter, rustic kitchen counter")
    assert "professional photograph" in p.text and len(p.text.replace(",", " ").split()) <= 18
    assert p.negative.startswith("people, illustration")
    req = llm_server.requests[0]
    assert req["response_format"]["json_schema"]["name"] == "cover_scene"
    assert "sourdough starter; dutch oven; crackling crust" in req["messages"][1]["content"]


def test_llm_prompt_failure_uses_the_template(llm_server):
    llm_server.script = [("status", 400)]
    p = build_prompt(TOPICS, "Sourdough at home", PromptSettings(), llm_server.settings())
    assert p.source == "template" and p.text.startswith("sourdough starter, dutch oven")


def test_endpoint_moderation(llm_server):
    prompt = ImagePrompt(text="a calm harbour at dawn, photo", negative="")
    moderate(prompt, [], llm_server.settings())  # /moderations is 404 here: blocklist only
    llm_server.moderation = {}
    moderate(prompt, [], llm_server.settings())  # not flagged
    llm_server.moderation = {"violence": True, "violence/graphic": True}
    with pytest.raises(ModerationError, match="violence, violence/graphic") as err:
        moderate(prompt, [], llm_server.settings())
    assert err.value.reason == "endpoint"
    moderate(prompt, [], llm_server.settings(moderation=False))  # switched off


def test_optimise_with_llm_revisions(llm_server):
    llm_server.script = [("revision", "sourdough loaf on a wooden board, warm light"),
                         ("revision", "jar of sourdough starter, bubbles, kitchen")]
    start = build_prompt(TOPICS, "Sourdough at home", PromptSettings())
    scores = {start.text: 0.2, "sourdough loaf on a wooden board, warm light": 0.6,
              "jar of sourdough starter, bubbles, kitchen": 0.4}
    res = optimise_prompt(start, lambda t: scores[t], rounds=2, topics=TOPICS, llm=llm_server.settings())
    assert res.best.text == "sourdough loaf on a wooden board, warm light" and res.best.source == "llm"
    assert res.best_score == 0.6
    assert [r.score for r in res.rounds] == [0.2, 0.6, 0.4]
    assert [r.kept for r in res.rounds] == [False, True, False]
    # the second request showed the model the first round's prompt and score
    assert "0.600: sourdough loaf" in llm_server.requests[1]["messages"][1]["content"]


def test_strict_schema_and_json_parsing():
    from pydantic import BaseModel, Field

    from nlp.llm import _strict_schema, parse_json_object

    class Item(BaseModel):
        title: str = Field(min_length=2, description="kept")
        tags: list[str] = Field(default_factory=list, max_length=3)

    class Answer(BaseModel):
        items: list[Item]

    schema = _strict_schema(Answer)
    item = schema["$defs"]["Item"]
    assert item["required"] == ["title", "tags"] and item["additionalProperties"] is False
    assert item["properties"]["title"] == {"type": "string", "description": "kept"}
    assert "default" not in item["properties"]["tags"] and "title" not in schema
    assert parse_json_object('{"a": 1}') == {"a": 1}
    assert parse_json_object('Sure!\n```json\n{"a": [1, 2]}\n```') == {"a": [1, 2]}
    assert parse_json_object('Here: {"a": {"b": 2}} and more text') == {"a": {"b": 2}}
    with pytest.raises(ValueError):
        parse_json_object("no json here")
