"""From ranked topics to a short, visual image prompt; moderation; optional optimisation rounds.

DALL·E Mini reads at most 64 BPE tokens and follows short prompts best, with the most important
words first. So a prompt is ``subject, details, style, platform context`` capped at
``max_words`` words; the negative prompt (used for the unconditional branch of super
conditioning) gathers the style's negatives, the user's negative words and a few defaults that
steer away from garbled text, which DALL·E Mini cannot draw.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, field_validator
from unidecode import unidecode

from nlp.errors import ModerationError
from nlp.keyphrases import lemma, phrase_key
from nlp.llm import LLMSettings, StructuredCaller
from nlp.models import ImagePrompt, Topic

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StylePreset:
    """How a style reads in the prompt (``suffix``, most telling words first) and what it
    steers away from (``negative``); ``context``: whether a platform's composition words follow."""

    suffix: str
    negative: tuple[str, ...]
    description: str
    context: bool = True


STYLE_PRESETS: dict[str, StylePreset] = {
    # The subject alone: for models trained on plain captions, such as the embedded one, which
    # draws "a red circle" far more often right than "red circle, digital illustration, vibrant
    # colors" (benchmarks/prompt_accuracy.py; numbers in dalle_core/embedded/README.md).
    "plain": StylePreset("", (), "the subject alone, no style or composition words", context=False),
    "photo": StylePreset("professional photograph, natural light, sharp focus",
                         ("illustration", "cartoon", "drawing"), "a realistic photograph"),
    "illustration": StylePreset("digital illustration, vibrant colors",
                                ("photo", "photorealistic"), "a colourful editorial illustration"),
    "pencil sketch": StylePreset("pencil sketch, graphite on paper, fine lines",
                                 ("color", "photo", "painting"), "a monochrome pencil drawing"),
    "flat vector": StylePreset("flat vector illustration, simple shapes, bold colors",
                               ("photo", "3d", "texture", "gradient"), "flat vector art, like an icon set"),
    "3d render": StylePreset("3d render, soft studio lighting, clay style",
                             ("photo", "sketch", "flat"), "a soft clay-like 3D render"),
    "watercolor": StylePreset("watercolor painting, soft washes, paper texture",
                              ("photo", "3d", "vector"), "a loose watercolour painting"),
    "oil painting": StylePreset("oil painting, visible brush strokes",
                                ("photo", "vector", "3d"), "a classic oil painting"),
    "isometric": StylePreset("isometric illustration, clean lines, pastel colors",
                             ("photo", "perspective", "sketch"), "an isometric diagram-like scene"),
    "line art": StylePreset("minimal line art, black ink on white",
                            ("color", "photo", "shading"), "a single-weight ink line drawing"),
    "cinematic": StylePreset("cinematic still, dramatic lighting, shallow depth of field",
                             ("cartoon", "drawing", "flat"), "a moody film still"),
    "pixel art": StylePreset("pixel art, 16-bit, retro game",
                             ("photo", "smooth", "3d"), "retro pixel art"),
    "low poly": StylePreset("low poly 3d art, geometric facets",
                            ("photo", "sketch", "texture"), "a faceted low-poly scene"),
}
_STYLE_ALIASES = {"none": "plain", "photograph": "photo", "photography": "photo", "sketch": "pencil sketch",
                  "vector": "flat vector", "3d": "3d render", "render": "3d render",
                  "watercolour": "watercolor", "painting": "oil painting"}

PLATFORM_CONTEXT: dict[str, str] = {
    "og": "wide banner composition",
    "blog": "wide banner composition",
    "linkedin": "professional, clean composition",
    "x": "bold, wide composition",
    "twitter": "bold, wide composition",
    "facebook": "friendly, wide composition",
    "instagram": "vibrant, centered square composition",
    "pinterest": "aesthetic, tall composition",
    "youtube": "bold, high contrast",
}

DEFAULT_NEGATIVE = ("text", "letters", "watermark", "logo", "blurry", "low quality")

# Built-in refusals (word-level, case-insensitive, plural-insensitive); configs add more.
DEFAULT_BLOCKLIST = (
    "nude", "naked", "nsfw", "porn", "pornographic", "sexual", "erotic", "genitals", "gore", "gory",
    "beheading", "decapitated", "dismembered", "mutilated", "corpse", "suicide", "self-harm",
    "swastika", "nazi", "kkk", "child abuse", "terrorist attack", "massacre", "torture",
)


def normalise_style(style: str) -> str:
    """Canonical preset name ("Pencil_Sketch" → "pencil sketch"); ValueError listing presets."""
    key = re.sub(r"[-_\s]+", " ", style.strip().lower())
    key = _STYLE_ALIASES.get(key, key)
    if key not in STYLE_PRESETS:
        raise ValueError(f"unknown style {style!r}: choose one of {', '.join(STYLE_PRESETS)}")
    return key


class PromptSettings(BaseModel):
    """Prompt options.

    style: a key of :data:`STYLE_PRESETS` (case, dashes and underscores are forgiven);
    negative_words: things to steer away from, added to the negative prompt; platform: where
    the image goes (a key of :data:`PLATFORM_CONTEXT`; unknown names add no context);
    max_words: cap on the prompt's words (DALL·E Mini: keep it short); max_topics: topics used.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    style: str = "illustration"
    negative_words: list[str] = Field(default_factory=list)
    platform: str | None = None
    max_words: int = Field(18, ge=4, le=60)
    max_topics: int = Field(3, ge=1, le=10)

    @field_validator("style")
    @classmethod
    def _style(cls, v: str) -> str:
        return normalise_style(v)


def _words(text: str) -> int:
    return len(text.replace(",", " ").split())


def _platform_context(platform: str | None) -> str:
    if not platform:
        return ""
    key = platform.strip().lower()
    for name, ctx in PLATFORM_CONTEXT.items():
        if key == name or key.startswith(name + "_") or key.startswith(name + "-"):
            return ctx
    logger.info("no prompt context for platform %r", platform)
    return ""


def _negative(settings: PromptSettings, preset: StylePreset) -> str:
    words: list[str] = []
    for w in [*settings.negative_words, *preset.negative, *DEFAULT_NEGATIVE]:
        w = " ".join(w.split()).strip(" ,")
        if w and w.lower() not in {x.lower() for x in words}:
            words.append(w)
    return ", ".join(words)


def _fit(subject_parts: list[str], settings: PromptSettings, preset: StylePreset) -> str:
    """Subject parts first, then style, then platform context, within ``max_words``.

    The style suffix is shortened (its comma parts dropped from the end) before any subject part
    beyond the first is dropped: the subject is what the image is about.
    """
    style_parts = [p.strip() for p in preset.suffix.split(",") if p.strip()]
    ctx = _platform_context(settings.platform) if preset.context else ""
    ctx_parts = [p.strip() for p in ctx.split(",")] if ctx else []
    subject = list(subject_parts)
    while True:
        text = ", ".join([*subject, *style_parts, *ctx_parts])
        if _words(text) <= settings.max_words:
            return text
        if ctx_parts:
            ctx_parts.pop()
        elif len(style_parts) > 1:
            style_parts.pop()
        elif len(subject) > 1:
            subject.pop()
        else:
            # One very long subject: keep its first words.
            room = max(settings.max_words - _words(", ".join(style_parts)), 2)
            return ", ".join([" ".join(subject[0].split()[:room]), *style_parts])


def _distinct(topics: Sequence[Topic | str], limit: int, min_rel: float = 0.0) -> list[str]:
    """Topic phrases with no phrase whose words repeat an earlier one's; topics scoring under
    ``min_rel`` × the first one's score are left out (they dilute a short prompt)."""
    out: list[str] = []
    seen: list[set[str]] = []
    top = next((t.score for t in topics if isinstance(t, Topic)), 0.0)
    for t in topics:
        if isinstance(t, Topic) and out and t.score < min_rel * top:
            continue
        phrase = t.phrase if isinstance(t, Topic) else str(t)
        key = set(phrase_key(phrase))
        if not key or any(key <= s for s in seen):
            continue
        out.append(phrase)
        seen.append(key)
        if len(out) >= limit:
            break
    return out


def template_prompt(topics: Sequence[Topic | str], title: str, settings: PromptSettings) -> ImagePrompt:
    """The prompt without an LLM: the top topics (most important first), style, context."""
    preset = STYLE_PRESETS[settings.style]
    parts = _distinct(topics, settings.max_topics, min_rel=0.3)
    if not parts:
        parts = [title.strip() or "abstract concept"]
    text = _fit(parts, settings, preset)
    return ImagePrompt(text=text, negative=_negative(settings, preset), style=settings.style,
                       topics=parts, source="template")


class SceneAnswer(BaseModel):
    """The LLM's scene for the cover image."""

    subject: str = Field(min_length=2, max_length=80, description="the main visible subject, 2-6 words")
    setting: str = Field(max_length=80, description="where it is, 1-5 words, may be empty")
    details: list[str] = Field(max_length=4, description="up to 3 concrete visual details, 1-4 words each")
    mood: str = Field(max_length=40, description="lighting or mood, 1-3 words, may be empty")


_SCENE_SYSTEM = (
    "You write image prompts for DALL-E Mini, a small text-to-image model that needs short, "
    "concrete, visual prompts. Turn the topics of a blog post into ONE concrete scene a "
    "photographer or illustrator could show: a visible subject (people, objects, places), a "
    "setting, up to 3 visual details and a mood. Abstract ideas must become things you can see. "
    "No text, logos, brand names or words in the image. Answer with JSON only: "
    '{"subject": "...", "setting": "...", "details": ["..."], "mood": "..."}.'
)


def llm_prompt(topics: Sequence[Topic | str], title: str, settings: PromptSettings,
               llm: LLMSettings, client=None) -> ImagePrompt:
    """The prompt with an LLM rewriting the topics into a concrete scene (structured output)."""
    preset = STYLE_PRESETS[settings.style]
    phrases = _distinct(topics, max(settings.max_topics, 5))
    avoid = ", ".join(settings.negative_words) or "nothing in particular"
    user = (f"Post title: {title or '(none)'}\nTopics, most important first: {'; '.join(phrases)}\n"
            f"Style: {preset.description}\nPlatform: {settings.platform or 'blog cover'}\n"
            f"Avoid: {avoid}")
    caller = StructuredCaller(llm, client=client)
    scene = caller.call([{"role": "system", "content": _SCENE_SYSTEM},
                         {"role": "user", "content": user}], SceneAnswer, "cover_scene")
    parts = [scene.subject.strip()]
    if scene.setting.strip():
        parts.append(scene.setting.strip())
    parts.extend(d.strip() for d in scene.details if d.strip())
    if scene.mood.strip():
        parts.append(scene.mood.strip())
    parts = [" ".join(p.split()).strip(" .,") for p in parts if p.strip(" .,")]
    text = _fit(parts, settings, preset)
    return ImagePrompt(text=text, negative=_negative(settings, preset), style=settings.style,
                       topics=phrases, source="llm", usage=caller.usage.as_dict())


def build_prompt(topics: Sequence[Topic | str], title: str, settings: PromptSettings | None = None,
                 llm: LLMSettings | None = None, client=None) -> ImagePrompt:
    """A short visual prompt: by the LLM when ``llm`` is configured (falling back to the
    template if the call fails), else from the template."""
    settings = settings or PromptSettings()
    if llm is not None and llm.configured:
        try:
            return llm_prompt(topics, title, settings, llm, client=client)
        except Exception as err:  # any endpoint failure: the template still makes a usable prompt
            logger.warning("LLM prompt failed (%s: %s); using the template",
                           type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
    return template_prompt(topics, title, settings)


# ---------------------------------------------------------------------------------------------
# Moderation


def _norm_words(text: str) -> list[str]:
    return [lemma(w) for w in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", unidecode(text).lower())]


def blocklist_hits(text: str, blocklist: Sequence[str]) -> list[str]:
    """Entries of ``blocklist`` found in ``text`` as whole words (plural and case forgiven)."""
    words = _norm_words(text)
    joined = f" {' '.join(words)} "
    hits = []
    for entry in blocklist:
        ew = _norm_words(entry)
        if ew and f" {' '.join(ew)} " in joined:
            hits.append(entry)
    return hits


def moderate(prompt: ImagePrompt | str, blocklist: Sequence[str] = (), llm: LLMSettings | None = None,
             client=None, use_default: bool = True) -> None:
    """Refuse a prompt: raises :class:`ModerationError` with the reason, returns None if fine.

    Checks the built-in :data:`DEFAULT_BLOCKLIST` (unless ``use_default=False``) plus
    ``blocklist``, then the endpoint's ``/moderations`` when ``llm`` is configured with
    ``moderation=True`` (an endpoint without one — most local servers — is skipped with a log
    line; an unreachable one too: the blocklist has already been applied).
    """
    text = prompt.text if isinstance(prompt, ImagePrompt) else str(prompt)
    entries = [*(DEFAULT_BLOCKLIST if use_default else ()), *blocklist]
    hits = blocklist_hits(text, entries)
    if hits:
        raise ModerationError(
            f"prompt refused: it contains blocked word(s) {', '.join(repr(h) for h in hits)}; "
            "edit the post's topics or the prompt (prompt.blocklist lists extra refused words)",
            reason="blocklist", matched=hits,
        )
    if llm is None or not llm.configured or not llm.moderation:
        return
    import openai

    from nlp.llm import make_client

    try:
        resp = (client or make_client(llm)).moderations.create(input=text)
    except openai.NotFoundError:
        logger.info("endpoint has no /moderations; blocklist only")
        return
    except (openai.APIStatusError, openai.APIConnectionError) as err:
        logger.warning("moderation endpoint unavailable (%s); blocklist only", type(err).__name__)
        return
    for result in resp.results:
        if result.flagged:
            cats = result.categories.model_dump() if hasattr(result.categories, "model_dump") else dict(result.categories)
            flagged = sorted(k for k, v in cats.items() if v)
            raise ModerationError(
                f"prompt refused by the endpoint's moderation ({', '.join(flagged) or 'flagged'}): "
                "edit the post's topics or the prompt",
                reason="endpoint", matched=flagged,
            )


# ---------------------------------------------------------------------------------------------
# Optimisation rounds


class PromptRound(BaseModel):
    """One optimisation round: the prompt tried, its score and where it came from."""

    round: int
    text: str
    score: float
    source: str
    kept: bool = False


class OptimisationResult(BaseModel):
    """The best prompt found and every round (for the manifest)."""

    best: ImagePrompt
    best_score: float
    rounds: list[PromptRound]


class _Revision(BaseModel):
    prompt: str = Field(min_length=3, max_length=300, description="the revised prompt")


_REVISE_SYSTEM = (
    "You improve prompts for DALL-E Mini. Images generated from each prompt were scored by how "
    "well they show the post's topics (higher is better). Write one new prompt, at most {n} "
    "words, short and concrete, the most important visual words first, ending with the style "
    'words. Answer with JSON only: {{"prompt": "..."}}.'
)


def _variant(base: ImagePrompt, topics: list[str], r: int, settings: PromptSettings) -> str:
    """Offline revision for round ``r``: rotate which topic leads, then vary how many are used."""
    if not topics:
        return base.text
    k = len(topics)
    lead = topics[r % k]
    rest = [t for t in topics if t != lead]
    count = 1 + (r // k) % max(k, 1)
    parts = [lead, *rest[: max(count - 1, 0) + 1]] if k > 1 else [lead]
    return _fit(parts, settings, STYLE_PRESETS[settings.style])


def optimise_prompt(
    prompt: ImagePrompt,
    score: Callable[[str], float],
    rounds: int = 3,
    *,
    topics: Sequence[Topic | str] | None = None,
    title: str = "",
    settings: PromptSettings | None = None,
    llm: LLMSettings | None = None,
    blocklist: Sequence[str] = (),
    client=None,
) -> OptimisationResult:
    """Try ``rounds`` revisions of ``prompt`` and keep the best-scoring one.

    ``score(prompt_text) -> float`` is the caller's (e.g. generate images and average their CLIP
    similarity to the topics). Revisions come from the LLM (shown every prompt so far with its
    score) when configured, else from template variants (rotating the leading topic). Revisions
    that fail moderation are recorded with score ``-inf`` and not kept.
    """
    settings = settings or PromptSettings(style=prompt.style)
    topic_list = _distinct(topics if topics is not None else prompt.topics, 6)
    history = [PromptRound(round=0, text=prompt.text, score=float(score(prompt.text)), source=prompt.source)]
    best_i = 0
    caller = StructuredCaller(llm, client=client) if llm is not None and llm.configured else None
    tried = {prompt.text.lower()}
    for r in range(1, rounds + 1):
        text, source = "", "template"
        if caller is not None:
            shown = "\n".join(f"{h.score:.3f}: {h.text}" for h in history)
            try:
                rev = caller.call([
                    {"role": "system", "content": _REVISE_SYSTEM.format(n=settings.max_words)},
                    {"role": "user", "content": f"Post title: {title or '(none)'}\nTopics: "
                     f"{'; '.join(topic_list)}\nPrompts so far (score: prompt):\n{shown}"},
                ], _Revision, "prompt_revision")
                text, source = " ".join(rev.prompt.split()), "llm"
            except Exception as err:  # endpoint trouble: keep optimising offline
                logger.warning("LLM revision failed (%s); template variant used", type(err).__name__)
        if not text or text.lower() in tried:
            # The next offline variant not tried yet; none left means nothing new to score.
            source = "template"
            variants = (_variant(prompt, topic_list, r + k, settings) for k in range(2 * len(topic_list) + 2))
            text = next((v for v in variants if v.lower() not in tried), "")
            if not text:
                logger.info("no new prompt variant after round %d; stopping", r - 1)
                break
        tried.add(text.lower())
        try:
            moderate(text, blocklist)
        except ModerationError as err:
            logger.warning("round %d prompt refused: %s", r, err)
            history.append(PromptRound(round=r, text=text, score=float("-inf"), source=source))
            continue
        history.append(PromptRound(round=r, text=text, score=float(score(text)), source=source))
        if history[-1].score > history[best_i].score:
            best_i = len(history) - 1
    history[best_i].kept = True
    best = history[best_i]
    best_prompt = prompt if best_i == 0 else prompt.model_copy(
        update={"text": best.text, "source": "llm" if best.source == "llm" else "template"})
    return OptimisationResult(best=best_prompt, best_score=best.score, rounds=history)
