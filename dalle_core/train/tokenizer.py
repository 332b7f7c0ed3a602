"""Train the byte-level BPE tokenizers of the embedded model on the shapes captions.

Two tokenizers, each saved in the file format of the published model it stands in for:

* DalleBart's (BART/RoBERTa style): ``vocab.json`` + ``merges.txt`` + ``tokenizer.json``, special
  tokens ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, ``<mask>``=4, ids wrapped as
  ``<s> … </s>``. Trained on the *normalised* captions (dalle-mini normalises text before BPE).
* CLIP's: ``vocab.json`` + ``merges.txt`` + ``tokenizer.json`` with words ending in ``</w>``,
  ``<|startoftext|>``/``<|endoftext|>`` as the two highest ids (CLIP pools the text at the highest
  id, the end-of-text token), and pad = ``<|endoftext|>`` as in ``openai/clip-vit-base-patch32``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

log = logging.getLogger(__name__)

BART_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's word splitter: contractions, letter runs, single digits, runs of other symbols.
_CLIP_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def default_normalizer() -> Callable[[str], str]:
    """dalle-mini's text normalizer from ``dalle_core.text`` (what generation applies to prompts)."""
    try:
        from dalle_core.text import TextNormalizer
    except ImportError:  # pragma: no cover - only while dalle_core.text is missing
        log.warning("dalle_core.text.TextNormalizer not available; training BPE on lower-cased text")
        return lambda t: " " + t.lower().strip()
    return TextNormalizer()


def train_bart_tokenizer(
    texts: Iterable[str], vocab_size: int, normalize: Callable[[str], str] | None = None
) -> Tokenizer:
    """Byte-level BPE (no prefix space, like BART's) with BART's five special tokens first."""
    if vocab_size < 256 + len(BART_SPECIALS):
        raise ValueError(f"vocab_size must be at least {256 + len(BART_SPECIALS)} for byte-level BPE, got {vocab_size}")
    normalize = normalize or (lambda t: t)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(BART_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((normalize(t) for t in texts), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=False, add_prefix_space=False)
    return tok


def save_bart_tokenizer(tok: Tokenizer, folder: str | os.PathLike, max_length: int) -> Path:
    """Write ``vocab.json``, ``merges.txt``, ``tokenizer.json`` and the two small config files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))
    tok.save(str(folder / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                "mask_token": "<mask>", "sep_token": "</s>", "cls_token": "<s>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BartTokenizer", "model_max_length": max_length,
                    "add_prefix_space": False, "errors": "replace", **specials}, indent=2)
    )
    return folder


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """CLIP-style BPE: lower-cased, words end in ``</w>``, BOS/EOS are the two highest ids."""
    if vocab_size < 2 * 256 + 2:
        raise ValueError(f"vocab_size must be at least {2 * 256 + 2} for CLIP's byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=CLIP_EOS, end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_WORDS), "removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 2,
        min_frequency=2,
        special_tokens=[],
        # every byte both inside and at the end of a word, as in CLIP's published vocab
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    # the trainer numbers the alphabet in hash order, different in every process: renumber it
    # (sorted, word-final bytes after the rest) so a run reproduces its vocab.json exactly
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    merged = {a + b for a, b in merges}
    ordered = sorted(model["vocab"], key=model["vocab"].get)
    alphabet = sorted((t for t in ordered if t not in merged), key=lambda t: (t.endswith("</w>"), t))
    vocab = {t: i for i, t in enumerate(alphabet + [t for t in ordered if t in merged])}
    tok.model = models.BPE(vocab=vocab, merges=merges, unk_token=CLIP_EOS, end_of_word_suffix="</w>")
    tok.add_special_tokens([CLIP_BOS, CLIP_EOS])
    bos, eos = tok.token_to_id(CLIP_BOS), tok.token_to_id(CLIP_EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLIP_BOS} $A {CLIP_EOS}", special_tokens=[(CLIP_BOS, bos), (CLIP_EOS, eos)]
    )
    return tok


def save_clip_tokenizer(tok: Tokenizer, folder: str | os.PathLike, max_length: int) -> Path:
    """Write CLIP's tokenizer files (``vocab.json`` includes the two special tokens, as published)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    vocab = tok.get_vocab()
    (folder / "vocab.json").write_text(json.dumps(dict(sorted(vocab.items(), key=lambda kv: kv[1])), ensure_ascii=False))
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    specials = {"bos_token": CLIP_BOS, "eos_token": CLIP_EOS, "unk_token": CLIP_EOS, "pad_token": CLIP_EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True, **specials}, indent=2)
    )
    return folder
