"""Markdown reading, titles, blocks and token-based chunking on real markdown."""

from __future__ import annotations

from pathlib import Path

import pytest

from qmd_triton.text.chunking import chunk_size_for
from qmd_triton.text.markdown import SkippedFile, blocks, read_document, reader_view, title_of

from ..conftest import ASSETS

NOTES = ASSETS / "notes"


def test_title_prefers_frontmatter_then_h1_then_fallback():
    assert title_of((NOTES / "guide" / "batching.md").read_text(), "x") == "Dynamic batching on Triton"
    assert title_of("## Sub\n\n# Main\n", "x") == "Main"
    assert title_of("## Only a sub heading\n", "x") == "Only a sub heading"
    assert title_of("```\n# not a heading\n```\nplain", "fallback") == "fallback"


def test_blocks_keep_a_code_fence_whole_with_blank_lines_inside():
    text = "intro\n\n```\nline one\n\nline three\n```\n\nafter"
    kinds = [(b.kind, b.start_line, b.end_line) for b in blocks(text)]
    assert kinds == [("paragraph", 1, 1), ("code", 3, 7), ("paragraph", 9, 9)]


def test_read_document_skips_binary_and_non_utf8(tmp_path: Path):
    (tmp_path / "img.md").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (tmp_path / "latin.md").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(SkippedFile, match="binary file"):
        read_document(tmp_path / "img.md")
    with pytest.raises(SkippedFile, match=r"not UTF-8 \(byte 0xe9 at offset 3\)"):
        read_document(tmp_path / "latin.md")
    with pytest.raises(SkippedFile, match="removed while indexing"):
        read_document(tmp_path / "gone.md")


def test_chunk_size_is_capped_by_the_model_window():
    assert chunk_size_for(8192) == 900
    assert chunk_size_for(256) == 254


def test_setext_headings_are_titles_and_badges_are_dropped_from_them():
    assert title_of("Project notes\n=============\n\nBody text.\n", "x") == "Project notes"
    assert title_of("Intro paragraph\n\nSubtitle\n--------\n\nMore.\n", "x") == "Subtitle"
    assert title_of("a paragraph line\nstill the paragraph\n---\n", "x") == "x"  # a rule under a paragraph
    badges = ("# [![Build](https://ci.example/badge.svg)](https://ci.example) [![PyPI](https://img/pypi.svg)]"
              "(https://pypi.org/x) qmd-triton <img src='logo.png'> **search**")
    assert title_of(badges + "\n", "x") == "qmd-triton search"
    assert len(title_of("# " + "word " * 300, "x")) <= 200


LICENCE_PAGE = """<!--
# Copyright 2018-2026, NVIDIA CORPORATION & AFFILIATES. All rights reserved.
#
# Redistribution and use in source and binary forms, with or without
# modification, are permitted provided that the following conditions are met.
-->

# Dynamic Batcher

The dynamic batcher holds requests for `max_queue_delay_microseconds`.
"""


def test_title_skips_a_licence_comment_before_the_first_heading():
    assert title_of(LICENCE_PAGE, "batcher") == "Dynamic Batcher"


def test_title_comes_from_front_matter_then_headings_outside_comments_and_code_then_the_file_name():
    front = "---\nauthors:\n  - Ann <ann@example.com>\ntitle: 'Release plan'\n---\n\n# Heading\n"
    assert title_of(front, "x") == "Release plan"
    assert title_of("---\nauthors: [ann]\n---\n# The heading\n", "x") == "The heading"  # front matter, no title
    assert title_of("+++\ntitle = \"Hugo page\"\n+++\nText.\n", "x") == "Hugo page"  # TOML front matter
    assert title_of("<!-- # Not this -->\nSetext title\n============\n\nBody.\n", "x") == "Setext title"
    assert title_of("```md\n# inside code\n```\n\n<!--\n# hidden\n-->\nJust prose, no heading.\n", "notes") == "notes"
    assert title_of("Some text <!-- # inline --> more\n\n## Second level\n", "x") == "Second level"


def test_reader_view_blanks_front_matter_and_comments_at_the_same_offsets():
    text = "---\nauthor: a@b.c\n---\nBefore <!-- hidden --> after.\n\n```html\n<!-- code keeps it -->\n```\n" \
           "Use `<!--` to open one.\n<!-- unclosed block\nto the end"
    view = reader_view(text)
    assert len(view) == len(text) and view.count("\n") == text.count("\n")
    assert "a@b.c" not in view and "hidden" not in view and "unclosed" not in view and "to the end" not in view
    assert "Before" in view and "after." in view
    assert "<!-- code keeps it -->" in view and "Use `<!--` to open one." in view
    # an inline opener that never closes in its paragraph is literal text
    assert reader_view("a <!-- b\n\nc --> d") == "a <!-- b\n\nc --> d"
