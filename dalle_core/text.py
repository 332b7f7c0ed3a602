"""Text side of DalleBart: dalle-mini's normalizer and the BART byte-level BPE tokenizer.

The normalizer is an ordered chain of small deterministic functions (``NORMALIZER_STEPS``), the
same steps dalle-mini's ``TextNormalizer`` runs, minus the two that need things we do not have
offline: hashtag splitting with a downloaded word-frequency table (``#`` is simply dropped) and the
random replacement of CC12M's ``<person>`` token (nothing random happens here).
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import ftfy
import numpy as np
from unidecode import unidecode

log = logging.getLogger(__name__)

# Placeholder spelled with letters only so that no later punctuation step can touch it.
_MARK = "xtokx"

# ---------------------------------------------------------------------------------------------
# Normalizer steps, in the order they run.


def fix_unicode(t: str) -> str:
    """Repair mojibake and odd Unicode (ftfy)."""
    return ftfy.fix_text(t)


def unescape_html(t: str) -> str:
    """HTML entities, unescaped twice because scraped captions are often escaped twice."""
    return html.unescape(html.unescape(t))


def demojize(t: str) -> str:
    """Emoji → ``:name:`` words; unidecode would otherwise drop them silently."""
    try:
        import emoji
    except ImportError:  # optional: without it emojis are dropped by the next step
        return t
    return emoji.demojize(t)


def to_ascii(t: str) -> str:
    """Transliterate to ASCII (é → e, “ → ")."""
    return unidecode(t)


def lowercase(t: str) -> str:
    return t.lower()


def remove_wiki_refs(t: str) -> str:
    """Leading/trailing ``[12]`` citation marks (WIT captions)."""
    t = re.sub(r"\A\s*\[\d+\]", "", t)
    return re.sub(r"\[\d+\]\s*\Z", "", t)


def remove_html_tags(t: str) -> str:
    return re.sub(r"<[^<]+?>", " ", t)


def remove_urls(t: str) -> str:
    return re.sub(r"http\S+", "", t)


def remove_thousands_commas(t: str) -> str:
    """1,000,000 → 1000000 (run twice: overlapping groups need a second pass)."""
    for _ in range(2):
        t = re.sub(r"(\d),(\d{3})", r"\1\2", t)
    return t


def protect_dots(t: str) -> str:
    """Keep dots inside words/numbers (3.5, e.g) from becoming commas later."""
    return re.sub(r"(\w)\.(\w)", rf"\1{_MARK}dot{_MARK}\2", t)


def protect_apostrophes(t: str) -> str:
    """Keep the apostrophe of 's 't 'd 'm 'll 're 've."""
    return re.sub(r"'(?=(s|t|d|m|ll|re|ve)\b)", f"{_MARK}quote{_MARK}", t)


def protect_dates(t: str) -> str:
    """Keep the slash of 1/2 or 12/05."""
    return re.sub(r"(\d)/(\d)", rf"\1{_MARK}slash{_MARK}\2", t)


def space_special_chars(t: str) -> str:
    """word-word → word word; always put spaces around % & / $ *."""
    t = re.sub(r"(\w)-(\w)", r"\1 \2", t)
    return re.sub(r"([%&/$*])", r" \1 ", t)


def drop_ignored_chars(t: str) -> str:
    """_ # and backslash carry no meaning for the model (``#tag`` keeps its word)."""
    return re.sub(r"[_#\\]", " ", t)


def simplify_quotes(t: str) -> str:
    """Every quote character becomes a spaced double quote."""
    return re.sub(r"['\"`]", ' " ', t)


def punctuation_to_commas(t: str) -> str:
    """Brackets, dots, pipes, colons, ?, !, =, +, ~, -, / and braces all become commas."""
    return re.sub(r"[()\[\].,|:;?!=+~\-/{}]", ",", t)


def restore_protected(t: str) -> str:
    """Undo :func:`protect_dots`, :func:`protect_apostrophes` and :func:`protect_dates`."""
    t = t.replace(f"{_MARK}dot{_MARK}", ".")
    t = t.replace(f"{_MARK}quote{_MARK}", "'")
    return t.replace(f"{_MARK}slash{_MARK}", "/")


def collapse_repeats(t: str) -> str:
    """A non-digit repeated 4+ times becomes one (3 is allowed: roman numerals like viii)."""
    return re.sub(r"(\D)\1{3,}", r"\1", t)


def merge_quotes(t: str) -> str:
    return re.sub(r'(\s*"+\s*)+', ' " ', t)


def merge_commas(t: str) -> str:
    return re.sub(r"(\s*,+\s*)+", ", ", t)


def collapse_whitespace(t: str) -> str:
    return re.sub(r"\s+", " ", t)


def strip_edge_commas(t: str) -> str:
    """One comma at either end is dropped, then surrounding spaces."""
    t = t.strip()
    if t.endswith(","):
        t = t[:-1]
    if t.startswith(","):
        t = t[1:]
    return t.strip()


def leading_space(t: str) -> str:
    """BART's byte-level BPE was trained on text that starts with a space."""
    return f" {t}"


NORMALIZER_STEPS: tuple[Callable[[str], str], ...] = (
    fix_unicode,
    unescape_html,
    demojize,
    to_ascii,
    lowercase,
    remove_wiki_refs,
    remove_html_tags,
    remove_urls,
    remove_thousands_commas,
    protect_dots,
    protect_apostrophes,
    protect_dates,
    space_special_chars,
    drop_ignored_chars,
    simplify_quotes,
    punctuation_to_commas,
    restore_protected,
    collapse_repeats,
    merge_quotes,
    merge_commas,
    collapse_whitespace,
    strip_edge_commas,
    leading_space,
)


def normalize_text(t: str) -> str:
    """dalle-mini's text normalization (offline subset), e.g. ``"Hello, World!!"`` → ``" hello, world"``."""
    for step in NORMALIZER_STEPS:
        t = step(t)
    return t


# ---------------------------------------------------------------------------------------------
# Tokenizer

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # BART's ids 0, 1, 2, 3, last


_END_TOKENS = ("<|endoftext|>", "</s>")


def tolerate_unknowns(tokenizer):
    """The same tokenizer, made safe for characters it has never seen.

    A BPE model whose ``unk_token`` is missing from its own vocabulary raises "Unk token … not
    found in the vocabulary" on the first unseen character (a small trained vocabulary meets an
    "x" or an emoji); one whose unknown token is the end-of-text token (CLIP's layout) ends the
    text at that character, since the text tower reads the first end-of-text. Such a model gets no
    unknown token instead: unseen characters are dropped and the rest of the text is encoded as
    before. A model with a separate unknown token (BART's ``<unk>``) is unchanged.
    """
    from tokenizers import Tokenizer

    state = json.loads(tokenizer.to_str())
    model = state.get("model") or {}
    unk = model.get("unk_token")
    vocab = model.get("vocab")
    if unk is None or not isinstance(vocab, dict) or (unk in vocab and unk not in _END_TOKENS):
        return tokenizer
    log.debug("tokenizer unknown token %r is not in its vocabulary: unseen characters are dropped", unk)
    model["unk_token"] = None
    return Tokenizer.from_str(json.dumps(state))


class TextTokenizer:
    """BART byte-level BPE: text → ``input_ids``/``attention_mask`` padded to ``max_length``.

    Wraps a ``tokenizers.Tokenizer``; adds ``<s> … </s>``, truncates to ``max_length`` (keeping
    ``</s>``) and pads with ``<pad>``. ``normalize`` runs :func:`normalize_text` first.
    """

    def __init__(self, tokenizer, max_length: int = 64, normalize: bool = True):
        from tokenizers import processors

        tokenizer = tolerate_unknowns(tokenizer)
        self.max_length = max_length
        self.normalize = normalize
        self._tok = tokenizer
        for name in ("<s>", "<pad>", "</s>"):
            if tokenizer.token_to_id(name) is None:
                raise ValueError(f"tokenizer has no {name} token; expected a BART byte-level BPE")
        self.bos_id = tokenizer.token_to_id("<s>")
        self.pad_id = tokenizer.token_to_id("<pad>")
        self.eos_id = tokenizer.token_to_id("</s>")
        tokenizer.post_processor = processors.RobertaProcessing(
            ("</s>", self.eos_id), ("<s>", self.bos_id), trim_offsets=True, add_prefix_space=False
        )
        tokenizer.enable_truncation(max_length)
        tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token="<pad>")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, max_length: int = 64, normalize: bool = True):
        """``tokenizer.json`` if present, else ``vocab.json`` + ``merges.txt``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers

        folder = Path(folder)
        if (folder / "tokenizer.json").exists():
            try:
                tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception as err:
                raise ValueError(
                    f"{folder / 'tokenizer.json'} is not a valid tokenizer file ({err})"
                ) from err
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            bpe = models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt"))
            tok = Tokenizer(bpe)
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
        else:
            raise FileNotFoundError(
                f"{folder}: no tokenizer.json or vocab.json + merges.txt; save the BART tokenizer "
                "next to the DalleBart checkpoint"
            )
        return cls(tok, max_length=max_length, normalize=normalize)

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``tokenizer.json``, ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(folder / "tokenizer.json"))
        self._tok.model.save(str(folder))  # vocab.json + merges.txt, for BartTokenizer(Fast)
        config = {
            "tokenizer_class": "BartTokenizer",
            "model_max_length": self.max_length,
            "add_prefix_space": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "mask_token": "<mask>",
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

    def __call__(
        self, texts: Sequence[str], normalize: bool | None = None
    ) -> dict[str, np.ndarray]:
        """list of N strings → ``input_ids``, ``attention_mask``: int32 [N, max_length].

        normalize: overrides the tokenizer's setting (dalle-mini tokenizes its unconditional
        empty prompt raw, giving just ``<s></s>``).
        """
        if isinstance(texts, str):
            raise TypeError("TextTokenizer expects a list of strings, not a single string")
        if self.normalize if normalize is None else normalize:
            texts = [normalize_text(t) for t in texts]
        encodings = self._tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in encodings], dtype=np.int32).reshape(
            len(texts), self.max_length
        )
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int32).reshape(ids.shape)
        return {"input_ids": ids, "attention_mask": mask}

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(int(i))

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(map(int, ids)), skip_special_tokens=True)


# A small vocabulary of the things blog covers show, for the fallback tokenizer of random-init
# and embedded models. Order is irrelevant; the word list is the training corpus.
_WORDS = """
a an the of and in on with for to at by from under over near behind above below between into
red orange yellow green blue purple pink brown black white gray grey gold silver dark light bright
pale colorful vivid pastel neon warm cool soft sharp
cat dog bird fish horse cow sheep lion tiger bear fox wolf owl eagle butterfly bee rabbit
tree forest flower garden grass leaf leaves plant cactus mountain hill river lake sea ocean beach
island desert snow rain cloud clouds sky sun sunset sunrise moon star stars night day morning
evening storm fog wind fire water ice rock stone sand field road path bridge city town village
street house home building tower castle church school office room kitchen window door wall roof
car bus train plane boat ship bicycle rocket robot computer laptop phone screen keyboard camera
book books paper pen pencil notebook desk chair table lamp clock cup coffee tea bread cake apple
orange banana pizza food dinner breakfast market shop store money coin chart graph growth data
network cloud server code software app web website internet email message chat team people person
man woman child children family friends teacher student doctor worker engineer artist chef
meeting business startup marketing sales product launch brand design idea strategy plan goal
success future travel adventure journey map compass globe world earth space planet galaxy
science research lab brain health fitness yoga sport football music guitar piano art painting
photo photograph illustration drawing sketch cartoon poster logo icon pattern texture abstract
minimal modern vintage retro classic futuristic realistic surreal digital watercolor oil pencil
pixel isometric flat render cinematic portrait landscape closeup aerial view scene background
big small tall short round square long wide empty full old new young happy sad calm busy quiet
running walking flying sitting standing reading writing working building growing learning
thinking talking cooking playing painting coding shopping traveling climbing swimming
one two three four five many several group pair crowd
spring summer autumn fall winter holiday christmas halloween wedding birthday party festival
security privacy lock key shield cloud computing artificial intelligence machine learning
""".split()


def build_fallback_tokenizer(
    vocab_size: int = 1024, max_length: int = 64, normalize: bool = True
) -> TextTokenizer:
    """A small BART-style byte-level BPE trained deterministically on a built-in word list.

    Used by random-init models and the embedded model (which saves it with its checkpoint).
    Special ids follow BART: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4.
    ``vocab_size`` is an upper bound: a small corpus runs out of merges before it is reached.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    base = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if vocab_size < base:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE (at least {base})"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Normalized text starts with a space, so train on " word" pieces; repeating each word a
    # few times in sorted order keeps counts (hence merges) independent of hashing order.
    corpus = [f" {w}" for w in sorted(set(_WORDS))] + [" " + " ".join(sorted(set(_WORDS)))]
    tok.train_from_iterator(corpus, trainer=trainer)
    return TextTokenizer(tok, max_length=max_length, normalize=normalize)
