"""Text -> token ids, shared by the ``qmd_tokenize`` Triton model and in-process baselines.

Texts are wrapped in a prompt format (query or document), tokenized with the
fast ``tokenizers`` library, truncated to the model's maximum length and padded
to a *length bucket*. Buckets exist for Triton's dynamic batcher: it merges only
requests whose shapes match, so padding every request to one of a few lengths
lets requests of similar length share a batch.

Example:
    >>> enc = TextEncoder.from_dir(Path("model_repository/qmd_tokenize/1"))
    >>> ids, mask = enc.encode(["hello world"], kind="query")
    >>> ids.shape
    (1, 16)
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qmd_triton.contracts import KIND_DOCUMENT, KIND_QUERY, PROMPT_KINDS
from qmd_triton.errors import ArtifactMissing, ConfigError, InputError

TOKENIZER_FILE = "tokenizer.json"
MANIFEST_FILE = "export.json"
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)
PARALLEL_MIN_TEXTS = 16  # below this, tokenize on the calling thread
# Long texts are cut before tokenizing so a 1 MB request costs no more than a long one. The cut is
# tried at these many characters per token of the maximum length, shortest first: prose needs about 5,
# a token covers at most 48 in practice, and the last width only bounds pathological text (below).
_CUT_CHARS_PER_TOKEN = (6, 48, 128)
_CHARS_PER_TOKEN_BOUND = _CUT_CHARS_PER_TOKEN[1]
# Characters that BERT-style normalizers and pre-tokenizers keep inside one word and never drop:
# letters and digits, except CJK ideographs (each its own word).
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_BLANKS = re.compile(r"[ \t\n\r]{2,}")


@dataclass(frozen=True)
class PromptFormats:
    """How a text is wrapped before embedding; ``{text}`` marks where it goes."""

    query: str = "{text}"
    document: str = "{text}"

    def __post_init__(self) -> None:
        for kind in PROMPT_KINDS:
            fmt = getattr(self, kind)
            if fmt.count("{text}") != 1:
                raise ConfigError(f"{kind}_prompt must contain '{{text}}' exactly once, got {fmt!r}")

    def apply(self, text: str, kind: str) -> str:
        if kind == KIND_QUERY:
            return self.query.replace("{text}", text)
        if kind == KIND_DOCUMENT:
            return self.document.replace("{text}", text)
        raise InputError(f"kind must be one of {', '.join(PROMPT_KINDS)}, got {kind!r}")


def parse_buckets(spec: str | Sequence[int] | None, max_length: int) -> tuple[int, ...]:
    """Parses ``"16,32,64"``; an empty spec means "pad to the longest text".

    Buckets above ``max_length`` are dropped and ``max_length`` itself is always a
    bucket, so every encoded text fits one.
    """
    if spec is None:
        values: list[int] = list(DEFAULT_BUCKETS)
    elif isinstance(spec, str):
        if not spec.strip():
            return ()
        try:
            values = [int(v) for v in spec.replace(" ", "").split(",") if v]
        except ValueError:
            raise ConfigError(f"length_buckets must be comma-separated integers, got {spec!r}") from None
    else:
        values = [int(v) for v in spec]
    if any(v <= 0 for v in values):
        raise ConfigError(f"length buckets must be positive, got {values}")
    kept = sorted({v for v in values if v < max_length} | {max_length})
    return tuple(kept)


def bucket_for(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds ``length`` tokens (``length`` if none)."""
    if not buckets:
        return length
    i = bisect_left(buckets, length)
    return buckets[i] if i < len(buckets) else length


def decode_text(raw: bytes | str, index: int | None, name: str = "text") -> str:
    """UTF-8 bytes from a BYTES tensor -> str, with a precise error for bad bytes naming the input
    (``text[3]``, or ``query`` for a one-value input: ``index=None``)."""
    if isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as e:
        where = name if index is None else f"{name}[{index}]"
        raise InputError(
            f"{where} is not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
        ) from None


class TextEncoder:
    """A tokenizer with a maximum length, prompt formats and length buckets."""

    def __init__(
        self,
        tokenizer_path: Path,
        max_length: int,
        prompts: PromptFormats = PromptFormats(),
        buckets: str | Sequence[int] | None = None,
    ) -> None:
        from tokenizers import Tokenizer  # heavy import kept out of module import

        if not tokenizer_path.is_file():
            raise ArtifactMissing(f"{tokenizer_path} is missing; run `qmdctl export`")
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2, got {max_length}")
        self.max_length = max_length
        self.prompts = prompts
        self.buckets = parse_buckets(buckets, max_length)
        self._tok = Tokenizer.from_file(str(tokenizer_path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        self._count = Tokenizer.from_file(str(tokenizer_path))
        self._count.no_padding()
        self._count.no_truncation()
        self._cut = LongTextCut(self._count, max_length)
        padding = json.loads(tokenizer_path.read_text(encoding="utf-8")).get("padding") or {}
        self.pad_id = int(padding.get("pad_id", 0))

    @classmethod
    def from_dir(
        cls,
        directory: Path,
        max_length: int | None = None,
        prompts: PromptFormats = PromptFormats(),
        buckets: str | Sequence[int] | None = None,
    ) -> TextEncoder:
        """Loads ``tokenizer.json`` and the exporter's manifest from a version folder.

        ``max_length`` is capped by the model's own limit recorded at export.
        """
        limit = read_manifest(directory).get("max_length")
        if max_length is None or max_length <= 0:
            max_length = int(limit or 512)
        elif limit:
            max_length = min(max_length, int(limit))
        return cls(directory / TOKENIZER_FILE, max_length, prompts, buckets)

    @classmethod
    def from_repository(cls, repo: Path, buckets: str | Sequence[int] | None = "") -> TextEncoder:
        """The encoder ``qmd_tokenize`` serves: its tokenizer, max length and prompt formats."""
        from qmd_triton.contracts import TOKENIZE
        from qmd_triton.model_config import parse_config, string_parameters

        params = string_parameters(parse_config(Path(repo) / TOKENIZE.name / "config.pbtxt"))
        prompts = PromptFormats(query=params.get("query_prompt") or "{text}",
                                document=params.get("document_prompt") or "{text}")
        return cls.from_dir(Path(repo) / TOKENIZE.name / "1", max_length=int(params.get("max_length") or 0) or None,
                            prompts=prompts, buckets=buckets)

    def _bounded(self, text: str) -> str:
        return self._cut.bounded(text)

    def encode(self, texts: Sequence[str], kind: str = KIND_DOCUMENT) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(input_ids, attention_mask)`` as int64 ``[len(texts), bucket]``."""
        return self.encode_mixed(texts, [kind] * len(texts))

    def encode_mixed(self, texts: Sequence[str], kinds: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`encode`, with a prompt kind per text."""
        return self.pad(self.token_ids(texts, kinds))

    def token_ids(self, texts: Sequence[str], kinds: Sequence[str]) -> list[list[int]]:
        """Token ids per text (prompted, truncated, unpadded), tokenized in parallel."""
        if len(texts) != len(kinds):
            raise InputError(f"{len(texts)} texts but {len(kinds)} kinds")
        if not texts:
            raise InputError("no texts to encode")
        prompted = [self._bounded(self.prompts.apply(t, k)) for t, k in zip(texts, kinds)]
        if len(prompted) < PARALLEL_MIN_TEXTS:
            # A handful of texts (what the server's batcher hands over): the tokenizers thread
            # pool costs more than it saves and takes cores from the model (2x the tokenize
            # time at concurrency 8 on 2 cores, perf/RESULTS.md).
            return [self._tok.encode(p).ids for p in prompted]
        return [e.ids for e in self._tok.encode_batch(prompted)]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Pads rows to the bucket of the longest: ``(input_ids, attention_mask)`` int64."""
        longest = max(len(r) for r in rows)
        width = bucket_for(longest, self.buckets)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    def full_lengths(self, texts: Sequence[str], kind: str = KIND_DOCUMENT) -> list[int]:
        """Tokens of each text as the model would read it untruncated (prompt and special tokens included)."""
        if not texts:
            return []
        return [len(e.ids) for e in self._count.encode_batch([self.prompts.apply(t, kind) for t in texts])]

    def count_tokens(self, text: str) -> int:
        """Tokens of a text without special tokens or truncation (for chunking)."""
        return len(self._count.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        """``count_tokens`` of many texts in one call."""
        if not texts:
            return []
        return [len(r.ids) for r in self._count.encode_batch(list(texts), add_special_tokens=False)]


class LongTextCut:
    """Bounds the work of tokenizing one text by characters, keeping its first ``max_length`` tokens exact.

    A prefix is used only when its whole words (all but the one the cut may split) hold ``max_length``
    tokens, so the first ``max_length`` tokens are those of the whole text. Text with few tokens for its length would
    defeat that (WordPiece makes any word over ``max_input_chars_per_word`` characters, say 2 MB
    without a space, one unknown token), so for WordPiece models long runs of letters or digits are
    shortened to just over that limit and runs of blanks to one space first; neither changes a token.
    Whatever still holds too few tokens for its length (megabytes of symbols or control characters) is
    cut at ``128 x max_length`` characters: bounded, and exact whenever that prefix holds
    ``max_length`` tokens.
    """

    def __init__(self, counter: Any, max_length: int) -> None:
        self.counter = counter  # a tokenizer without truncation or special tokens added
        self.max_length = max_length
        self.squeeze_word = self._word_limit(counter)
        k = self.squeeze_word
        self._long_words = re.compile(f"[^\\W_{_CJK}]{{{k + 1},}}") if k else None

    @staticmethod
    def _word_limit(tok: Any) -> int | None:
        """WordPiece's ``max_input_chars_per_word`` + 1 when the pipeline is BERT's, else None."""
        from tokenizers import models, normalizers, pre_tokenizers

        if not isinstance(tok.model, models.WordPiece) or not isinstance(tok.pre_tokenizer,
                                                                           pre_tokenizers.BertPreTokenizer):
            return None
        if tok.normalizer is not None and not isinstance(tok.normalizer, normalizers.BertNormalizer):
            return None
        return int(tok.model.max_input_chars_per_word) + 1

    def _enough(self, prefix: str) -> bool:
        """True when the prefix's whole words alone give ``max_length`` tokens: the word the cut may have
        split is the only one whose tokens can differ from the whole text's."""
        words = self.counter.encode(prefix, add_special_tokens=False).word_ids
        if not words or words[-1] is None:  # no pre-tokenizer: keep a margin instead
            return len(words) >= self.max_length + 8
        return words.index(words[-1]) >= self.max_length

    def squeeze(self, text: str) -> str:
        """Long words (one unknown token however long) and blank runs shortened; tokens unchanged."""
        if self._long_words is None:
            return text
        k = self.squeeze_word
        return _BLANKS.sub(" ", self._long_words.sub(lambda m: m.group()[:k], text))

    def _squeezed_prefix(self, text: str, length: int) -> str:
        """``squeeze(text)`` up to about ``length`` characters, squeezing no more of the text than that needs.

        Squeezing a prefix gives a prefix of the squeezed text, up to the blank or word the cut splits."""
        window = 4 * length
        while True:
            squeezed = self.squeeze(text[:window])
            if len(squeezed) > length or window >= len(text):
                return squeezed
            window *= 2

    def bounded(self, text: str) -> str:
        """The text, or a prefix of it (of the squeezed text for a pathological one) that tokenizes the same."""
        widths = [self.max_length * per for per in _CUT_CHARS_PER_TOKEN]
        for limit in widths[:2]:
            if len(text) <= limit:
                return text
            if self._enough(text[:limit]):
                return text[:limit]
        text = self._squeezed_prefix(text, widths[-1])
        for limit in widths[1:]:
            if len(text) <= limit or self._enough(text[:limit]):
                return text[:limit]
        return text[: widths[-1]]


def read_manifest(directory: Path, name: str = MANIFEST_FILE) -> dict:
    """The exporter's ``export.json`` (or another of its JSON records) in a version folder, or ``{}`` if absent."""
    path = directory / name
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable export manifest: {e}") from None


def _is_cjk(text: str) -> bool:
    return any("\u3040" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af" or "\uf900" <= ch <= "\ufaff"
               for ch in text)


class PairEncoder:
    """(query, passage) pairs for a cross-encoder: ``input_ids``, ``attention_mask``, ``token_type_ids``.

    Only the passage is truncated (the query is short and must survive whole);
    rows are padded to the longest pair of the call.
    """

    def __init__(self, tokenizer_path: Path, max_length: int = 512, buckets: str | Sequence[int] | None = "") -> None:
        from tokenizers import Tokenizer

        if not tokenizer_path.is_file():
            raise ArtifactMissing(f"{tokenizer_path} is missing; run `qmdctl export`")
        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(tokenizer_path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length, strategy="only_second")
        self._single = Tokenizer.from_file(str(tokenizer_path))
        self._single.no_padding()
        self._single.no_truncation()
        self._cut = LongTextCut(self._single, max_length)
        padding = json.loads(tokenizer_path.read_text(encoding="utf-8")).get("padding") or {}
        self.pad_id = int(padding.get("pad_id", 0))
        self.max_query_tokens = max(8, max_length // 4)
        self.buckets = parse_buckets(buckets, max_length)

    def _short_query(self, query: str) -> str:
        """The query cut to a quarter of the window, so passages always keep room."""
        enc = self._single.encode(query[: self.max_query_tokens * _CHARS_PER_TOKEN_BOUND], add_special_tokens=False)
        if len(enc.ids) <= self.max_query_tokens:
            return query
        return query[: enc.offsets[self.max_query_tokens - 1][1]]

    def pair_lengths(self, query: str, passages: Sequence[str]) -> list[int]:
        """Tokens of each (query, passage) pair untruncated, special tokens included."""
        if not passages:
            return []
        return [len(e.ids) for e in self._single.encode_batch([(query, p) for p in passages])]

    def count(self, passages: Sequence[str]) -> list[int]:
        """Tokens of each passage as the cross-encoder reads it (no special tokens, no truncation)."""
        if not passages:
            return []
        return [len(e.ids) for e in self._single.encode_batch(list(passages), add_special_tokens=False)]

    def window(self, passage: str, terms: Sequence[str], budget: int) -> str:
        """The ``budget``-token stretch of a passage that holds the most occurrences of the terms (the first
        such stretch on ties; the passage's start when no term occurs); the passage itself when it fits.

        This bounds what one (query, passage) pair costs the cross-encoder, whatever the chunk size.
        """
        if budget <= 0:
            return passage
        enc = self._single.encode(passage[: (budget + 1) * _CHARS_PER_TOKEN_BOUND * 8], add_special_tokens=False)
        offsets = enc.offsets
        if len(offsets) <= budget:
            return passage
        low = passage.lower()
        stems = [t[:5] if not _is_cjk(t) and len(t) > 5 else t for t in terms if t.strip()]
        hits = sorted(m.start() for s in set(stems) for m in re.finditer(re.escape(s.lower()), low))
        starts = [o[0] for o in offsets]
        best, best_key = 0, (-1, 0.0)
        lo = hi = 0
        for i in range(0, len(offsets) - budget + 1):
            begin, end = starts[i], offsets[i + budget - 1][1]
            while lo < len(hits) and hits[lo] < begin:
                lo += 1
            hi = max(hi, lo)
            while hi < len(hits) and hits[hi] < end:
                hi += 1
            # the most occurrences; among equals, the window whose occurrences sit nearest its middle
            centered = -abs((hits[lo] + hits[hi - 1]) / 2 - (begin + end) / 2) if hi > lo else 0.0
            if (hi - lo, centered) > best_key:
                best, best_key = i, (hi - lo, centered)
        return passage[starts[best] : offsets[best + budget - 1][1]]

    def encode(self, query: str, passages: Sequence[str], terms: Sequence[str] = (),
               passage_tokens: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pair tokens; with ``passage_tokens``, each passage is first cut to its best window of that many
        tokens (:meth:`window`, around ``terms``)."""
        if not passages:
            raise InputError("no passages to pair with the query")
        if passage_tokens > 0:
            passages = [self.window(p, terms, passage_tokens) for p in passages]
        query = self._short_query(query)
        # Cut very long passages first: only max_length tokens of them can count.
        cut = [self._cut.bounded(p) for p in passages]
        encodings = self._tok.encode_batch([(query, p) for p in cut])
        width = bucket_for(max(len(e.ids) for e in encodings), self.buckets)
        ids = np.full((len(cut), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(cut), width), dtype=np.int64)
        types = np.zeros((len(cut), width), dtype=np.int64)
        for i, e in enumerate(encodings):
            n = len(e.ids)
            ids[i, :n] = e.ids
            mask[i, :n] = 1
            types[i, :n] = e.type_ids
        return ids, mask, types
