"""Markdown-aware chunking by the embedding model's tokens.

A document is cut into blocks (headings, paragraphs, fenced code) and packed into
chunks of at most ``max_tokens``; a new section (a heading) starts a new chunk
once the current one is half full; consecutive chunks overlap by whole trailing
blocks worth up to ``overlap`` of the size.

Chunk ends are chosen by content, so an edit changes the chunks around it and no
others: greedy packing alone would shift every later boundary (one inserted line
in a 450-chunk note re-embedded 234 chunks). A block ends a chunk when its own
text says so (a hash of the block, drawn with a chance in proportion to its
tokens: about one such end per chunk size of tokens) and the chunk is a third
full; after an edit, both versions meet at the next such block and chunk alike
from there. Fenced code is never split (a fence
larger than a chunk becomes a chunk of its own); a paragraph larger than a chunk
is split at sentence ends, then, for a sentence with no end in sight, by length.

Every chunk's text is an exact slice of the document (line breaks, list items and
blank lines as written), so its first and last line numbers are exact and a line
found inside a chunk maps back to the document by adding its offset.

Example:
    >>> chunks = chunk_markdown(text, counter.count_many, max_tokens=254)
    >>> chunks[0].start_line
    1
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qmd_triton.text.markdown import Block, blocks, reader_view

CHUNK_TOKENS = 900
CHUNK_OVERLAP = 0.15
# Part of the embedding fingerprint: an index chunked by another version is chunked again by `embed`.
# 2: chunks are exact slices of the document (1 re-joined split paragraphs with spaces).
# 3: content-defined chunk ends (an edit re-chunks its neighbourhood, not the rest of the document).
# 4: chunks of the reader's view (front matter and HTML comments blanked); no block larger than a chunk (long code
#    split at line ends).
CHUNKER_VERSION = 4
CDC_SPAN = 1.0  # one content-defined end per chunk-size of tokens, on average (+9% chunks on triton-docs)
CDC_MIN = 1 / 3  # ... honoured once the chunk is at least this full
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s+|(?<=[。！？])")

Counter = Callable[[Sequence[str]], list[int]]


@dataclass(frozen=True)
class Chunk:
    seq: int
    start_line: int
    end_line: int
    text: str
    tokens: int


def chunk_size_for(max_length: int, prompt_tokens: int = 0) -> int:
    """The design's 900 tokens, capped so a chunk fits the model's window whole.

    Tokens beyond the window would be silently truncated at embedding time and be
    invisible to vector search, so the cap is a correctness bound, not a tuning.
    """
    return max(16, min(CHUNK_TOKENS, max_length - 2 - prompt_tokens))


def chunk_markdown(text: str, count: Counter, max_tokens: int = CHUNK_TOKENS,
                   overlap: float = CHUNK_OVERLAP) -> list[Chunk]:
    """Chunks of what a reader sees (:func:`reader_view`: front matter and HTML comments blanked, lines kept),
    none longer than ``max_tokens``."""
    text = reader_view(text)
    units = _units(blocks(text), count, max_tokens)
    if not units:
        return []
    budget = int(max_tokens * overlap)
    groups: list[list[tuple[Block, int]]] = []
    current: list[tuple[Block, int]] = []
    size = 0
    ends_here = False  # the previous block ends a chunk by its content
    for block, n in units:
        new_section = block.kind == "heading" and size >= max_tokens // 2
        if current and (size + n > max_tokens or new_section or (ends_here and size >= max_tokens * CDC_MIN)):
            groups.append(current)
            tail: list[tuple[Block, int]] = []
            carried = 0
            if not new_section:
                for prev in reversed(current):
                    if prev[0].kind == "code" or carried + prev[1] > budget:
                        break
                    tail.insert(0, prev)
                    carried += prev[1]
            if len(tail) == len(current) or carried + n > max_tokens:
                tail, carried = [], 0
            current, size = tail, carried
        current.append((block, n))
        size += n
        ends_here = _content_end(block.text, n, max_tokens)
    groups.append(current)
    return [
        Chunk(
            seq=i,
            start_line=g[0][0].start_line,
            end_line=g[-1][0].end_line,
            text=text[g[0][0].start : g[-1][0].end],
            tokens=sum(n for _, n in g),
        )
        for i, g in enumerate(groups)
    ]


def _content_end(text: str, tokens: int, max_tokens: int) -> bool:
    """Whether a block ends a chunk, decided by its own text: a hash drawn against tokens / (CDC_SPAN * size)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < tokens / (CDC_SPAN * max_tokens)


def _units(bl: list[Block], count: Counter, max_tokens: int) -> list[tuple[Block, int]]:
    """Blocks with their token counts; a block larger than a chunk is split into pieces that fit (a paragraph at
    sentence ends, fenced code and anything else at line ends), so no chunk outgrows the embedder's window."""
    if not bl:
        return []
    out: list[tuple[Block, int]] = []
    for block, n in zip(bl, count([b.text for b in bl])):
        if n <= max_tokens:
            out.append((block, n))
        elif block.kind == "paragraph":
            out.extend(_split_paragraph(block, count, max_tokens))
        else:
            out.extend(_split_lines(block, count, max_tokens))
    return out


def _spans(text: str, start: int, end: int) -> tuple[int, int] | None:
    """``(start, end)`` narrowed to exclude surrounding whitespace; None when only whitespace is left."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _split_lines(block: Block, count: Counter, max_tokens: int) -> list[tuple[Block, int]]:
    """Packs a long block's lines (a code fence larger than a chunk, an unclosed fence running to the end) into
    pieces of at most ``max_tokens``, each an exact slice; a line longer than that is cut by length."""
    text = block.text
    lines: list[tuple[int, int]] = []
    start = 0
    for line in text.split("\n"):
        span = _spans(text, start, start + len(line))
        if span:
            lines.append(span)
        start += len(line) + 1
    return _pack(block, lines, count, max_tokens, block.kind)


def _split_paragraph(block: Block, count: Counter, max_tokens: int) -> list[tuple[Block, int]]:
    """Packs a long paragraph's sentences into pieces of at most ``max_tokens``, each an exact slice."""
    text = block.text
    sentences: list[tuple[int, int]] = []
    last = 0
    for m in _SENTENCE_END.finditer(text):
        span = _spans(text, last, m.start() if m.group(0).strip() == "" and m.start() != m.end() else m.end())
        if span:
            sentences.append(span)
        last = m.end()
    span = _spans(text, last, len(text))
    if span:
        sentences.append(span)
    return _pack(block, sentences, count, max_tokens, "paragraph")


def _fit(text: str, a: int, b: int, n: int, count: Counter, max_tokens: int) -> list[tuple[int, int, int]]:
    """``text[a:b]`` (``n`` tokens) as pieces of at most ``max_tokens``, cut by length where it has no break."""
    if n <= max_tokens or b - a <= 1:
        return [(a, b, n)]
    step = max(1, int((b - a) * max_tokens / n * 0.9))
    cuts = [s for s in (_spans(text, x, min(x + step, b)) for x in range(a, b, step)) if s]
    out: list[tuple[int, int, int]] = []
    for (x, y), k in zip(cuts, count([text[x:y] for x, y in cuts])):
        out.extend(_fit(text, x, y, k, count, max_tokens) if k > max_tokens and (x, y) != (a, b) else [(x, y, k)])
    return out


def _pack(block: Block, spans: list[tuple[int, int]], count: Counter, max_tokens: int,
          kind: str) -> list[tuple[Block, int]]:
    """Groups consecutive spans of a block (sentences, lines) into pieces of at most ``max_tokens``."""
    text = block.text
    pieces: list[tuple[int, int, int]] = []
    for (a, b), n in zip(spans, count([text[a:b] for a, b in spans])):
        pieces.extend(_fit(text, a, b, n, count, max_tokens))
    out: list[tuple[Block, int]] = []
    group: list[tuple[int, int, int]] = []

    def flush() -> None:
        a, b = group[0][0], group[-1][1]
        first = block.start_line + text.count("\n", 0, a)
        last_line = block.start_line + text.count("\n", 0, b)
        out.append((Block(first, last_line, text[a:b], kind, block.start + a, block.start + b),
                    sum(n for _, _, n in group)))

    for piece in pieces:
        if group and sum(n for _, _, n in group) + piece[2] > max_tokens:
            flush()
            group = []
        group.append(piece)
    if group:
        flush()
    return out
