"""Rendering result lists: cli, json, csv, md, xml, files.

Example:
    >>> print(render(hits, "csv"))
    docid,score,file,title,line,snippet,context
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from qmd_triton.search.options import Hit

FORMATS = ("cli", "json", "csv", "md", "xml", "files")


def escape(text: str) -> str:
    """XML character data (xml.sax.saxutils would import urllib, which `qmdctl search` does not need)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoteattr(text: str) -> str:
    """A double-quoted XML attribute value."""
    return '"' + escape(text).replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;") + '"'


def render(hits: Sequence[Hit], fmt: str, *, line_numbers: bool = False, color: bool = False,
           roots: Mapping[str, Path] | None = None) -> str:
    """Hits in a format. ``roots`` (collection -> folder) shows files as absolute paths (``--full-path``)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    if roots:
        hits = [replace(h, collection=str(roots[h.collection]), path=h.path) if h.collection in roots else h
                for h in hits]
    return _RENDERERS[fmt](hits, line_numbers, color)


def _text(hit: Hit, line_numbers: bool) -> str:
    text = hit.body if hit.body is not None else hit.snippet
    first = 1 if hit.body is not None else hit.line
    if not line_numbers:
        return text
    return "\n".join(f"{first + i:>5}  {ln}" for i, ln in enumerate(text.split("\n")))


def _cli(hits: Sequence[Hit], line_numbers: bool, color: bool) -> str:
    if not hits:
        return "No results.\n"
    out = []
    for h in hits:
        head = f"{h.file}:{h.line}  #{h.docid}  {h.score:.2f}"
        title = f"  {h.title}" if h.title else ""
        if color:
            head = f"\x1b[36m{h.file}:{h.line}\x1b[0m  \x1b[2m#{h.docid}\x1b[0m  \x1b[32m{h.score:.2f}\x1b[0m"
            title = f"  \x1b[1m{h.title}\x1b[0m" if h.title else ""
        body = "\n".join("    " + ln for ln in _text(h, line_numbers).split("\n"))
        why = f"    ~ {explain_line(h.explain)}\n" if h.explain else ""
        context = f"    » {h.context}\n" if h.context else ""
        out.append(f"{head}{title}\n{context}{why}{body}\n")
    stages = hits[0].explain.get("stages") if hits[0].explain else None
    if stages:  # query --explain: what ran and what was bypassed, once, after the hits
        out.append(stages_text(stages, (hits[0].explain.get("expansion") or {}).get("lines")))
    return "\n".join(out)


def stages_text(stages: dict, searched: dict | None = None) -> str:
    """Which stages of ``query`` ran and which were bypassed, and why, then the lines searched beside the query
    (the expansion's, fresh or cached, or the caller's) (``query --explain``, once per answer)."""
    lines = ["stages:"]
    for name, record in stages.items():
        why = f" ({record['why']})" if record.get("why") else ""
        lines.append(f"  {name:<10} {record.get('status', '-')}{why}")
    for kind in ("lex", "vec", "hyde"):
        for text in (searched or {}).get(kind) or []:
            lines.append(f"  {kind + ':':<10} {text}")
    return "\n".join(lines) + "\n"


def explain_line(e: dict) -> str:
    """One line saying why a hit ranks where it does (``query --explain``)."""
    lists = ", ".join(f"{src} #{rank}" for src, rank in sorted(e.get("lists", {}).items(), key=lambda x: x[1]))
    parts = [f"lists: {lists or '-'}", f"rrf {e.get('rrf', 0):.4f} (#{e.get('rrf_rank', '-')})"]
    if "rerank" in e:
        parts.append("rerank - (passage not read: fused place kept)" if e["rerank"] is None
                     else f"rerank {e['rerank']:.3f}")
        parts.append(f"fusion {e.get('fusion', '-')}")
        if e.get("fusion") == "prior" and e.get("rerank") is not None:
            parts.append(f"logit {e.get('logit', 0.0):+.2f} prior {e.get('prior', 0.0):+.2f} "
                         f"({e.get('unread', 0.0):.0%} of the page unread)")
        elif e.get("fusion") == "blend":
            parts.append(f"blend weight {e.get('blend_weight', 0.0):.2f}")
    if "candidates" in e:
        limit = f" (limit {e['candidate_limit']})" if "candidate_limit" in e else ""
        parts.append(f"{e['candidates']} candidates{limit}")
    exp = e.get("expansion") or {}
    if exp:
        parts.append(f"expansion {exp.get('status', '-')} ({exp.get('ms', 0):.0f} ms)")
    return "; ".join(parts)


def _json(hits: Sequence[Hit], line_numbers: bool, color: bool) -> str:
    return json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False) + "\n"


def _csv(hits: Sequence[Hit], line_numbers: bool, color: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["docid", "score", "file", "title", "line", "snippet", "context"])
    for h in hits:
        w.writerow([f"#{h.docid}", f"{h.score:.4f}", h.file, h.title, h.line, _text(h, line_numbers), h.context])
    return buf.getvalue()


def _md(hits: Sequence[Hit], line_numbers: bool, color: bool) -> str:
    if not hits:
        return "_No results._\n"
    out = []
    for i, h in enumerate(hits, 1):
        out.append(f"{i}. **{h.title or h.path}** — `{h.file}:{h.line}` (#{h.docid}, score {h.score:.2f})\n"
                   + (f"   _{h.context}_\n" if h.context else ""))
        fence = "````" if "```" in _text(h, line_numbers) else "```"
        out.append(f"   {fence}\n" + "\n".join("   " + ln for ln in _text(h, line_numbers).split("\n"))
                   + f"\n   {fence}\n")
    return "\n".join(out)


def _xml(hits: Sequence[Hit], line_numbers: bool, color: bool) -> str:
    out = ["<results>"]
    for h in hits:
        out.append(
            f"  <result docid={quoteattr('#' + h.docid)} score={quoteattr(f'{h.score:.4f}')} "
            f"file={quoteattr(h.file)} line={quoteattr(str(h.line))} title={quoteattr(h.title)}"
            + (f" context={quoteattr(h.context)}" if h.context else "") + ">"
            f"{escape(_text(h, line_numbers))}</result>"
        )
    out.append("</results>")
    return "\n".join(out) + "\n"


def _files(hits: Sequence[Hit], line_numbers: bool, color: bool) -> str:
    return "".join(f"{h.file}\n" for h in hits)


_RENDERERS = {"cli": _cli, "json": _json, "csv": _csv, "md": _md, "xml": _xml, "files": _files}
