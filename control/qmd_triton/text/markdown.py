"""Markdown as the index sees it: reading files safely, titles, and blocks for chunking.

Example:
    >>> doc = read_document(Path("notes/a.md"))
    >>> title_of(doc, "a.md")
    'A heading'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from qmd_triton.errors import InputError

_SNIFF_BYTES = 8192
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FRONT_TITLE = re.compile(r"^title\s*[:=]\s*['\"]?(.+?)['\"]?\s*$", re.MULTILINE)


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


_FRONT_OPEN = {"---": ("---", "..."), "+++": ("+++",)}  # YAML (Jekyll, Hugo, Obsidian) and TOML (Hugo)


def frontmatter_end(text: str) -> int:
    """Where a leading front matter block (``---`` YAML or ``+++`` TOML, closed by its fence line) ends: the
    offset just after its closing line, or 0 when the text has none."""
    first = text.split("\n", 1)[0].rstrip()
    closers = _FRONT_OPEN.get(first)
    if closers is None or "\n" not in text:
        return 0
    pos = len(text.split("\n", 1)[0]) + 1
    while pos < len(text):
        end = text.find("\n", pos)
        line = text[pos:] if end == -1 else text[pos:end]
        if line.rstrip() in closers:
            return len(text) if end == -1 else end + 1
        if end == -1:
            break
        pos = end + 1
    return 0  # never closed: a thematic break, not front matter


def strip_frontmatter(text: str) -> tuple[str, str]:
    """``(frontmatter, rest)`` for a leading front matter block, else ``("", text)``."""
    end = frontmatter_end(text)
    return text[:end], text[end:]


_COMMENT_OPEN = "<!--"
_COMMENT_CLOSE = "-->"
_CODE_SPAN = re.compile(r"(`+)(?:.*?[^`])?\1(?!`)")


def hidden_spans(text: str) -> list[tuple[int, int]]:
    """Character ranges a reader of the rendered page never sees: the front matter and HTML comments.

    A comment that opens its line (an HTML block) runs to its ``-->`` or, unclosed, to the end of the document,
    as CommonMark renders it; one that starts inside a line counts only when it closes before the paragraph
    ends (else it is literal text). Comments inside fenced code or code spans are code, and stay.
    """
    spans: list[tuple[int, int]] = []
    front = frontmatter_end(text)
    if front:
        spans.append((0, front))
    n = len(text)
    fence: str | None = None
    line_start = front
    while line_start < n:
        line_end = _line_end(text, line_start)
        line = text[line_start:line_end]
        if fence is not None:
            if re.match(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                fence = None
            line_start = line_end + 1
            continue
        opened = _FENCE.match(line)
        if opened:
            fence = opened.group(1)
            line_start = line_end + 1
            continue
        cursor = line_start
        while (start := _comment_start(text[cursor:line_end])) is not None:
            begin = cursor + start
            close = text.find(_COMMENT_CLOSE, begin + len(_COMMENT_OPEN))
            opens_line = not text[text.rfind("\n", 0, begin) + 1 : begin].strip()
            if close == -1:
                if opens_line:
                    spans.append((begin, n))
                    return spans
                break
            stop = close + len(_COMMENT_CLOSE)
            if not opens_line and _PARAGRAPH_END.search(text, begin, stop):
                break  # an inline opener whose close lies past the paragraph: literal text
            spans.append((begin, stop))
            cursor = stop
            line_end = _line_end(text, stop)  # the comment may close on a later line
        line_start = line_end + 1
    return spans


_PARAGRAPH_END = re.compile(r"\n[ \t]*\n")


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end == -1 else end


def _comment_start(line: str) -> int | None:
    """The offset of the first ``<!--`` of a line that is not inside a code span."""
    if _COMMENT_OPEN not in line:
        return None
    i = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line).find(_COMMENT_OPEN)
    return None if i == -1 else i


def reader_view(text: str) -> str:
    """The text as a reader of the rendered page sees it, at the same offsets: every hidden character (front
    matter, HTML comments) becomes a space and every line break stays, so line numbers and slices of the view
    are the document's. Titles, chunks, the passages the reranker reads and snippets come from it."""
    spans = hidden_spans(text)
    if not spans:
        return text
    parts: list[str] = []
    last = 0
    for a, b in spans:
        parts.append(text[last:a])
        parts.append(re.sub(r"[^\n]", " ", text[a:b]))
        last = b
    parts.append(text[last:])
    return "".join(parts)


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


@dataclass(frozen=True)
class Heading:
    line: int  # 1-based
    level: int  # 1-6 (setext: 1 for ===, 2 for ---)
    text: str  # as a title: markup reduced to text


def headings(text: str) -> list[Heading]:
    """The headings a reader sees (ATX and setext, outside front matter, HTML comments and code), in order."""
    lines = reader_view(text).split("\n")
    out: list[Heading] = []
    in_fence = None
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
        if title:
            out.append(Heading(i + 1, found[0], title))
    return out


def title_of(text: str, fallback: str) -> str:
    """What a reader takes for the page's title: front matter ``title:``, else the first level-1 heading (``#`` or
    ``===`` underlined) outside HTML comments, front matter and code, else the first heading of any level (a page that
    opens with ``### Name`` and has ``## Known issues`` further down is "Name"), else ``fallback`` (the file name);
    heading markup (badges, links) reduced to text."""
    front, _ = strip_frontmatter(text)
    m = _FRONT_TITLE.search(front)
    if m:
        return plain_title(m.group(1)) or fallback
    found = headings(text)
    first = next((h for h in found if h.level == 1), found[0] if found else None)
    return first.text if first else fallback


def section_path(found: Sequence[Heading], line: int) -> list[str]:
    """The headings in force at a 1-based line, outermost first (``["Batcher", "Delayed batching"]``): each
    heading closes the deeper ones before it."""
    stack: list[Heading] = []
    for h in found:
        if h.line > line:
            break
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
    return [h.text for h in stack]


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
