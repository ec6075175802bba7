"""Markdown as the index sees it: reading files safely, titles, and blocks for chunking.

Example:
    >>> doc = read_document(Path("notes/a.md"))
    >>> title_of(doc, "a.md")
    'A heading'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qmd_triton.errors import InputError

_SNIFF_BYTES = 8192
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FRONT_TITLE = re.compile(r"^title:\s*['\"]?(.+?)['\"]?\s*$", re.MULTILINE)


class SkippedFile(InputError):
    """A file that is not indexable text (binary, not UTF-8, vanished)."""


def read_document(path: Path, max_bytes: int = 16 * 1024 * 1024) -> str:
    """UTF-8 text of a file with newlines normalized; ``SkippedFile`` says why not."""
    try:
        with path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise SkippedFile(f"{path}: removed while indexing") from None
    except OSError as e:
        raise SkippedFile(f"{path}: unreadable ({e.strerror})") from None
    if len(raw) > max_bytes:
        raise SkippedFile(f"{path}: larger than {max_bytes} bytes")
    if b"\0" in raw[:_SNIFF_BYTES]:
        raise SkippedFile(f"{path}: binary file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SkippedFile(f"{path}: not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def strip_frontmatter(text: str) -> tuple[str, str]:
    """``(frontmatter, rest)`` for a leading ``---`` YAML block, else ``("", text)``."""
    if text.startswith("---\n"):
        end = text.find("\n---", 4)
        if end != -1:
            close = text.find("\n", end + 4)
            close = len(text) if close == -1 else close + 1
            return text[:close], text[close:]
    return "", text


TITLE_CHARS = 200
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_REF_LINK = re.compile(r"\[([^\]]*)\]\[[^\]]*\]")
_HTML = re.compile(r"<[^>]+>")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def plain_title(text: str) -> str:
    """Heading text as a title: images (badges) dropped, links to their text, HTML tags and emphasis
    marks removed, whitespace collapsed, at most 200 characters."""
    text = _IMAGE.sub("", text)
    text = _REF_LINK.sub(r"\1", _LINK.sub(r"\1", text))
    text = _HTML.sub("", text)
    text = re.sub(r"(\*\*|__|`)", "", text)
    text = " ".join(text.split()).strip(" -|:")
    return text if len(text) <= TITLE_CHARS else text[: TITLE_CHARS - 1].rstrip() + "…"


def title_of(text: str, fallback: str) -> str:
    """Frontmatter ``title:``, else the first level-1 heading (``#`` or ``===`` underlined), else the
    highest heading of any level, else ``fallback``; heading markup (badges, links) reduced to text."""
    front, body = strip_frontmatter(text)
    m = _FRONT_TITLE.search(front)
    if m:
        return plain_title(m.group(1)) or fallback
    best: tuple[int, str] | None = None
    in_fence = None
    lines = body.split("\n")
    for i, line in enumerate(lines):
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)[0]
            in_fence = None if in_fence == marker else (in_fence or marker)
            continue
        if in_fence:
            continue
        found: tuple[int, str] | None = None
        h = _ATX.match(line)
        if h:
            found = (len(h.group(1)), h.group(2))
        elif (line.strip() and not line.startswith("    ") and i + 1 < len(lines)
              and (u := _SETEXT.match(lines[i + 1])) and not _SETEXT.match(line)
              and not (u.group(1).startswith("-") and i > 0 and lines[i - 1].strip())):
            found = (1 if u.group(1).startswith("=") else 2, line)
        if found is None:
            continue
        title = plain_title(found[1])
        if not title:
            continue
        if found[0] == 1:
            return title
        if best is None or found[0] < best[0]:
            best = (found[0], title)
    return best[1] if best else fallback


@dataclass(frozen=True)
class Block:
    """A unit chunking never splits lightly: a heading, a paragraph or a fenced code block.

    ``start``/``end`` are character offsets into the document (``text == document[start:end]``),
    so a chunk made of blocks is an exact slice of the document and its line numbers are exact.
    """

    start_line: int  # 1-based, inclusive
    end_line: int
    text: str
    kind: str  # "heading" | "paragraph" | "code"
    start: int = 0
    end: int = 0


def blocks(text: str) -> list[Block]:
    """Splits markdown at its natural break points; fenced code stays whole."""
    lines = text.split("\n")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)

    def block(first: int, last: int, kind: str) -> Block:  # 0-based line indices, inclusive
        return Block(first + 1, last + 1, "\n".join(lines[first : last + 1]), kind, offsets[first],
                     offsets[last + 1] - 1)

    out: list[Block] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(1)
            j = i + 1
            while j < len(lines) and not re.match(rf"^ {{0,3}}{re.escape(marker[0])}{{{len(marker)},}}\s*$", lines[j]):
                j += 1
            end = min(j, len(lines) - 1)
            out.append(block(i, end, "code"))
            i = end + 1
            continue
        if _ATX.match(line):
            out.append(block(i, i, "heading"))
            i += 1
            continue
        j = i
        while (j + 1 < len(lines) and lines[j + 1].strip() and not _FENCE.match(lines[j + 1])
               and not _ATX.match(lines[j + 1])):
            j += 1
        out.append(block(i, j, "paragraph"))
        i = j + 1
    return out
