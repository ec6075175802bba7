"""Markdown-aware chunking by the embedding model's tokens.

A document is cut into blocks (headings, paragraphs, fenced code) and packed into
chunks of at most ``max_tokens``; a new section (a heading) starts a new chunk
once the current one is half full; consecutive chunks overlap by whole trailing
blocks worth up to ``overlap`` of the size. Fenced code is never split (a fence
larger than a chunk becomes a chunk of its own); a paragraph larger than a chunk
is split at sentence ends, then, for a sentence with no end in sight, by length.

Example:
    >>> chunks = chunk_markdown(text, counter.count_many, max_tokens=254)
    >>> chunks[0].start_line
    1
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qmd_triton.text.markdown import Block, blocks

CHUNK_TOKENS = 900
CHUNK_OVERLAP = 0.15
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
    units = _units(blocks(text), count, max_tokens)
    if not units:
        return []
    budget = int(max_tokens * overlap)
    groups: list[list[tuple[Block, int]]] = []
    current: list[tuple[Block, int]] = []
    size = 0
    for block, n in units:
        new_section = block.kind == "heading" and size >= max_tokens // 2
        if current and (size + n > max_tokens or new_section):
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
    groups.append(current)
    return [
        Chunk(
            seq=i,
            start_line=g[0][0].start_line,
            end_line=g[-1][0].end_line,
            text="\n\n".join(b.text for b, _ in g),
            tokens=sum(n for _, n in g),
        )
        for i, g in enumerate(groups)
    ]


def _units(bl: list[Block], count: Counter, max_tokens: int) -> list[tuple[Block, int]]:
    if not bl:
        return []
    out: list[tuple[Block, int]] = []
    for block, n in zip(bl, count([b.text for b in bl])):
        if n > max_tokens and block.kind == "paragraph":
            out.extend(_split_paragraph(block, count, max_tokens))
        else:
            out.append((block, n))
    return out


def _split_paragraph(block: Block, count: Counter, max_tokens: int) -> list[tuple[Block, int]]:
    """Packs a long paragraph's sentences into pieces of at most ``max_tokens``."""
    sentences = [s for s in _SENTENCE_END.split(block.text) if s.strip()]
    sizes = count(sentences)
    pieces: list[tuple[str, int]] = []
    for s, n in zip(sentences, sizes):
        if n <= max_tokens:
            pieces.append((s, n))
            continue
        step = max(1, int(len(s) * max_tokens / n * 0.9))
        parts = [s[i : i + step] for i in range(0, len(s), step)]
        pieces.extend(zip(parts, count(parts)))
    out: list[tuple[Block, int]] = []
    buf: list[str] = []
    total = 0
    consumed = 0
    line = block.start_line

    def flush() -> None:
        nonlocal buf, total, line, consumed
        piece = " ".join(buf)
        lines_in = piece.count("\n")
        out.append((Block(line, min(block.end_line, line + lines_in), piece, "paragraph"), total))
        consumed += len(piece)
        line = min(block.end_line, block.start_line + block.text.count("\n", 0, consumed))
        buf, total = [], 0

    for s, n in pieces:
        if buf and total + n > max_tokens:
            flush()
        buf.append(s.strip())
        total += n
    if buf:
        flush()
    return out
