"""Markdown reading, titles, blocks and token-based chunking on real markdown.

The tests of chunking that need token-based chunking with the exported embedding tokenizer: the integration tier
(DESIGN.md section 6); the rest are in tests/unit/test_chunking.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qmd_triton.index.fingerprint import embedding_setup
from qmd_triton.text.chunking import chunk_markdown
from qmd_triton.text.markdown import blocks


@pytest.fixture(scope="module")
def count(exported_repo: Path):
    return embedding_setup(exported_repo).count_tokens


def long_markdown() -> str:
    parts = ["# Operating notes", ""]
    for s in range(8):
        parts += [f"## Section {s}", ""]
        for p in range(4):
            parts += [
                f"Paragraph {p} of section {s} explains how the index keeps documents, chunks and vectors "
                "in one SQLite file, and why a reader never sees half of an update. " * 2,
                "",
            ]
        if s == 3:
            parts += ["```python"] + [f"value_{i} = compute({i}, retries=3)  # step {i}" for i in range(20)] + ["```", ""]
        if s == 5:
            parts += ["混合检索把关键词检索与向量检索的结果合并，再由交叉编码器重排，得到最终的排序结果。" * 6, ""]
    return "\n".join(parts)


def test_chunks_respect_size_keep_code_whole_and_track_lines(count):
    text = long_markdown()
    chunks = chunk_markdown(text, count, max_tokens=400)
    assert len(chunks) > 5
    code = next(b.text for b in blocks(text) if b.kind == "code")
    assert count([code])[0] <= 400
    holders = [c for c in chunks if "value_0 = compute" in c.text]
    assert len(holders) == 1 and code in holders[0].text  # a fence that fits a chunk is never split
    lines = text.split("\n")
    for c in chunks:
        assert count([c.text])[0] <= 400 + 4
        assert lines[c.start_line - 1].strip() and c.text.startswith(lines[c.start_line - 1].strip()[:20])
    assert any("混合检索" in c.text for c in chunks)


@pytest.mark.parametrize("fence_end", ["```\n\nAfter the code.\n", ""])  # closed, or unclosed to the end
def test_no_chunk_outgrows_the_window_when_a_code_block_is_larger_than_a_chunk(count, fence_end: str):
    code_lines = [f"value_{i} = compute({i}, retries=3)  # step {i} of the long listing" for i in range(120)]
    one_long_line = "x = [" + ", ".join(str(i) for i in range(600)) + "]"
    text = "# Listing\n\nIntro.\n\n```python\n" + "\n".join(code_lines + [one_long_line]) + "\n" + fence_end
    lines = text.split("\n")
    chunks = chunk_markdown(text, count, max_tokens=120)
    assert all(count([c.text])[0] <= 120 + 4 for c in chunks)
    joined = "\n".join(c.text for c in chunks)
    assert all(f"value_{i} = compute" in joined for i in range(120))  # nothing is lost, the tail included
    assert "599]" in joined
    for c in chunks:  # exact slices: line numbers stay right
        assert c.text in "\n".join(lines[c.start_line - 1 : c.end_line])


def test_consecutive_chunks_overlap_within_a_section(count):
    paragraph = "The index keeps documents, chunks and vectors in one SQLite file."
    text = "# One section\n\n" + "\n\n".join(f"{paragraph} Note {i}." for i in range(40))
    chunks = chunk_markdown(text, count, max_tokens=120)
    assert len(chunks) >= 3
    for a, b in zip(chunks, chunks[1:]):
        last_of_a = a.text.split("\n\n")[-1]
        assert b.text.startswith(last_of_a)
        assert b.start_line <= a.end_line
        a_paras, b_paras = a.text.split("\n\n"), b.text.split("\n\n")
        shared = max(k for k in range(1, len(b_paras)) if b_paras[:k] == a_paras[-k:])
        assert count(["\n\n".join(b_paras[:shared])])[0] <= 0.15 * 120  # the overlap stays within 15%


def test_a_new_section_starts_a_new_chunk_once_half_full(count):
    long_body = "Words about indexing and search quality. " * 16
    text = f"# A\n\n{long_body}\n\n# B\n\nA short closing section."
    assert count([text])[0] < 200  # everything would fit one chunk without the section rule
    chunks = chunk_markdown(text, count, max_tokens=200)
    assert [c.text.split("\n")[0] for c in chunks] == ["# A", "# B"]


def test_a_huge_paragraph_is_split_at_sentences(count):
    text = " ".join(f"Sentence number {i} talks about vectors." for i in range(200))
    chunks = chunk_markdown(text, count, max_tokens=100)
    assert len(chunks) > 5
    assert all(count([c.text])[0] <= 104 for c in chunks)
    assert chunks[0].text.startswith("Sentence number 0")


def test_chunks_are_exact_slices_so_their_line_numbers_are_exact(count):
    """A long list or paragraph split into chunks keeps its line breaks, and each chunk's lines are the
    document's lines (text re-joined with spaces shifted every line number after it)."""
    items = [f"- item {i}: the batcher merges requests that arrive within the queue delay." for i in range(80)]
    text = "# Process\n\nIntro line.\n\n" + "\n".join(items) + "\n\n\n\nClosing words after two blank lines.\n"
    lines = text.split("\n")
    chunks = chunk_markdown(text, count, max_tokens=120)
    assert len(chunks) >= 5
    for c in chunks:
        assert c.text == "\n".join(lines[c.start_line - 1 : c.end_line]), (c.start_line, c.end_line)
        assert "\n- item" in c.text or c.text.startswith(("- item", "# Process", "Closing"))
    last = chunks[-1]
    assert last.text.endswith("Closing words after two blank lines.")
    assert lines[last.end_line - 1] == "Closing words after two blank lines."


LICENCE_PAGE = """<!--
# Copyright 2018-2026, NVIDIA CORPORATION & AFFILIATES. All rights reserved.
#
# Redistribution and use in source and binary forms, with or without
# modification, are permitted provided that the following conditions are met.
-->

# Dynamic Batcher

The dynamic batcher holds requests for `max_queue_delay_microseconds`.
"""


def test_chunks_and_their_passages_never_hold_front_matter_or_comments(count):
    text = "---\nauthors:\n  - Ann Example <ann@example.com>\n---\n" + LICENCE_PAGE + "\n" + \
        "\n\n".join(f"Paragraph {i} on queue delays and preferred batch sizes." for i in range(30))
    chunks = chunk_markdown(text, count, max_tokens=100)
    lines = text.split("\n")
    assert chunks[0].start_line == lines.index("# Dynamic Batcher") + 1
    for c in chunks:
        assert "Copyright" not in c.text and "ann@example.com" not in c.text
        assert c.text.strip() == "\n".join(lines[c.start_line - 1 : c.end_line]).strip()
    assert chunk_markdown("<!-- only a comment -->\n", count) == []
