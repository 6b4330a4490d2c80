"""GSM 03.38 detection, smart replacement and segment counting.

A text is GSM-7 when every character is in the GSM 03.38 default alphabet or its
extension table (extension characters cost two septets: ESC + char). Otherwise it is
UCS-2, counted in UTF-16 code units (an emoji outside the BMP is a surrogate pair, two
units). One segment holds 160 septets or 70 units; a concatenated message's parts hold
153 septets or 67 units (the UDH takes the rest), and a part never splits an escape
sequence or a surrogate pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)

Encoding = Literal["GSM-7", "UCS-2"]

GSM_SINGLE, GSM_MULTI = 160, 153
UCS2_SINGLE, UCS2_MULTI = 70, 67

# Typographic characters that have a faithful GSM-7 stand-in ("smart encoding").
SMART_REPLACEMENTS: dict[str, str] = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-", "\u2212": "-",
    "\u2026": "...",
    "\u00a0": " ", "\u2002": " ", "\u2003": " ", "\u2009": " ", "\u200a": " ", "\u202f": " ", "\u2007": " ",
    "\u200b": "", "\ufeff": "", "\u2060": "",
    "\u2022": "-", "\u00b7": ".",
    "\u02c6": "^", "\u02dc": "~", "\u2039": "<", "\u203a": ">",
    "\u00e7": "\u00c7",  # GSM has only the capital C cedilla
    "\u2044": "/", "\u2215": "/",
}


@lru_cache(maxsize=4096)
def gsm_septets(char: str) -> int:
    """Septets ``char`` takes in GSM-7 (1, or 2 for the extension table), or 0 if it has none."""
    try:
        return len(char.encode("gsm03.38"))
    except (UnicodeEncodeError, KeyError):
        return 0


def _one_septet_characters() -> frozenset[str]:
    """Every character of the GSM 03.38 default alphabet (one septet each), read off the codec."""
    found = set()
    for byte in range(128):
        if byte == 0x1B:  # the escape to the extension table
            continue
        try:
            char = bytes([byte]).decode("gsm03.38")
        except (UnicodeDecodeError, KeyError):
            continue
        if len(char) == 1 and gsm_septets(char) == 1:
            found.add(char)
    return frozenset(found)


# Fast paths (C-level set and translate operations); the per-character functions stay the
# definition, and tests check the two agree.
GSM_ONE_SEPTET = _one_septet_characters()
_SMART_TABLE = str.maketrans(SMART_REPLACEMENTS)


def smart_replace(text: str) -> str:
    """Replace typographic characters by GSM-7 look-alikes, only if that makes the text GSM-7."""
    replaced = text.translate(_SMART_TABLE)
    return replaced if is_gsm7(replaced) else text


def is_gsm7(text: str) -> bool:
    return GSM_ONE_SEPTET.issuperset(text) or all(gsm_septets(c) for c in text)


def _utf16_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    encoding: Encoding
    segments: int
    characters: int  # Unicode code points
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    text: str  # the text as it will be sent (after smart replacement, if asked)
    parts: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "encoding": self.encoding,
            "segments": self.segments,
            "characters": self.characters,
            "units": self.units,
            "text": self.text,
            "parts": list(self.parts),
        }


def split_parts(text: str, cost: list[int], single: int, multi: int) -> tuple[str, ...]:
    """Split ``text`` into parts whose summed character costs stay within the limits."""
    if sum(cost) <= single:
        return (text,) if text else ()
    parts: list[str] = []
    start, used = 0, 0
    for i, c in enumerate(cost):
        if used + c > multi:  # a character (escape pair, surrogate pair) is never split
            parts.append(text[start:i])
            start, used = i, 0
        used += c
    parts.append(text[start:])
    return tuple(parts)


def analyse(text: str, *, smart: bool = False) -> SegmentInfo:
    """Encoding, segment count and parts of ``text`` (optionally after smart replacement)."""
    if smart:
        text = smart_replace(text)
    if GSM_ONE_SEPTET.issuperset(text):  # the common case: one septet per character
        n = len(text)
        parts = split_parts(text, [1] * n, GSM_SINGLE, GSM_MULTI) if n > GSM_SINGLE else ((text,) if text else ())
        return SegmentInfo("GSM-7", max(1, len(parts)), n, n, text, parts)
    septets = [gsm_septets(c) for c in text]
    if all(septets):
        parts = split_parts(text, septets, GSM_SINGLE, GSM_MULTI)
        return SegmentInfo("GSM-7", max(1, len(parts)), len(text), sum(septets), text, parts)
    units = [_utf16_units(c) for c in text]
    parts = split_parts(text, units, UCS2_SINGLE, UCS2_MULTI)
    return SegmentInfo("UCS-2", max(1, len(parts)), len(text), sum(units), text, parts)
