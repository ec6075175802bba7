"""Which writing systems a text is in, and whether a model that declares its languages reads it.

Every model of a profile declares the languages it reads (``languages`` in the registry, copied
into its export manifest). A language stands for the scripts it is written in (``en`` -> Latin,
``zh`` -> Han, ``ja`` -> Han and kana, ...; ``*`` for a model trained on most languages). A model
*reads* a text when the scripts of its languages hold at least ``READ_SHARE`` (80%) of the text's
letters; a Han, kana or hangul character counts as one letter, digits, punctuation and symbols
not at all, so a text without letters is read by every model. The pipeline bypasses a stage
whose model does not read the query, and keeps a candidate the reranker does not read in its
fused place (docs/search.md).

Example:
    >>> reads(("en",), "how do I configure dynamic batching")
    True
    >>> reads(("en",), "怎样配置动态批处理")
    False
    >>> reads(("zh", "en"), "Triton 的动态批处理")
    True
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

READ_SHARE = 0.8

# Code point ranges of the scripts told apart; a letter in none of them is "other".
_RANGES = {
    "latin": "A-Za-z\u00aa\u00ba\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u1e00-\u1eff\u2c60-\u2c7f\ua720-\ua7ff"
             "\uff21-\uff3a\uff41-\uff5a",
    "greek": "\u0370-\u03ff\u1f00-\u1fff",
    "cyrillic": "\u0400-\u052f\u1c80-\u1c8f\u2de0-\u2dff\ua640-\ua69f",
    "armenian": "\u0530-\u058f",
    "hebrew": "\u0590-\u05ff\ufb1d-\ufb4f",
    "arabic": "\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff",
    "devanagari": "\u0900-\u097f",
    "bengali": "\u0980-\u09ff",
    "tamil": "\u0b80-\u0bff",
    "thai": "\u0e00-\u0e7f",
    "georgian": "\u10a0-\u10ff",
    "hangul": "\u1100-\u11ff\u3130-\u318f\ua960-\ua97f\uac00-\ud7af",
    "kana": "\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f",
    "han": "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f",
}
SCRIPTS = (*_RANGES, "other")
_SCRIPT_RE = {name: re.compile(f"[{chars}]") for name, chars in _RANGES.items()}
_LETTERS = re.compile(r"[^\W\d_]+")

ANY = "*"  # a model trained on most of the world's languages (bge-m3, multilingual-e5, ...)
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    **{code: ("latin",) for code in (
        "en", "fr", "de", "es", "it", "pt", "nl", "sv", "da", "no", "nb", "fi", "is", "pl", "cs", "sk", "sl", "hr",
        "bs", "ro", "hu", "et", "lv", "lt", "tr", "az", "id", "ms", "vi", "tl", "sw", "ca", "eu", "gl", "ga", "cy",
        "sq", "mt", "af", "la", "eo", "uz")},
    **{code: ("cyrillic",) for code in ("ru", "uk", "be", "bg", "mk", "sr", "kk", "ky", "mn", "tg")},
    **{code: ("arabic",) for code in ("ar", "fa", "ur", "ps")},
    "el": ("greek",), "he": ("hebrew",), "yi": ("hebrew",), "hy": ("armenian",), "ka": ("georgian",),
    "hi": ("devanagari",), "mr": ("devanagari",), "ne": ("devanagari",), "bn": ("bengali",), "ta": ("tamil",),
    "th": ("thai",),
    "zh": ("han",), "ja": ("han", "kana"), "ko": ("hangul", "han"),
}


def check_languages(languages: Iterable[str]) -> tuple[str, ...]:
    """Declared languages as given, each known (``ValueError`` names the first unknown one)."""
    out = []
    for code in languages:
        code = str(code).strip().lower()
        if code != ANY and code not in LANGUAGE_SCRIPTS:
            raise ValueError(f"unknown language {code!r}: use an ISO 639-1 code ({', '.join(sorted(LANGUAGE_SCRIPTS))})"
                             f" or {ANY!r} for a model trained on most languages")
        if code not in out:
            out.append(code)
    if not out:
        raise ValueError("declare at least one language")
    return tuple(out)


def scripts_of(languages: Sequence[str]) -> frozenset[str] | None:
    """The scripts a set of languages is written in; None when they include ``*`` (every script)."""
    if ANY in languages:
        return None
    return frozenset(s for code in languages for s in LANGUAGE_SCRIPTS.get(code, ()))


def letter_counts(text: str) -> Counter[str]:
    """How many letters of each script ``text`` holds (digits, punctuation and symbols are not letters)."""
    letters = "".join(_LETTERS.findall(text))
    counts: Counter[str] = Counter()
    if not letters:
        return counts
    if letters.isascii():
        counts["latin"] = len(letters)
        return counts
    seen = 0
    for name, rx in _SCRIPT_RE.items():
        n = len(rx.findall(letters))
        if n:
            counts[name] = n
            seen += n
    if seen < len(letters):
        counts["other"] = len(letters) - seen
    return counts


def read_share(languages: Sequence[str] | None, text: str) -> float:
    """The share of ``text``'s letters in scripts of ``languages`` (1.0 without letters or with ``*``/None)."""
    if languages is None:
        return 1.0
    scripts = scripts_of(languages)
    counts = letter_counts(text)
    total = sum(counts.values())
    if scripts is None or total == 0:
        return 1.0
    return sum(n for s, n in counts.items() if s in scripts) / total


def reads(languages: Sequence[str] | None, text: str) -> bool:
    """Whether a model declaring ``languages`` reads ``text`` (None: undeclared, read as every script)."""
    return read_share(languages, text) >= READ_SHARE


def main_script(text: str) -> str:
    """The script holding most of ``text``'s letters ("none" without letters)."""
    counts = letter_counts(text)
    return counts.most_common(1)[0][0] if counts else "none"
