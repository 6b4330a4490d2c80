import pytest

from shared.sms.encoding import analyse, smart_replace


@pytest.mark.parametrize(
    ("text", "encoding", "segments", "units"),
    [
        ("a" * 160, "GSM-7", 1, 160),
        ("a" * 161, "GSM-7", 2, 161),
        ("a" * 306, "GSM-7", 2, 306),
        ("a" * 307, "GSM-7", 3, 307),
        ("€" * 80, "GSM-7", 1, 160),  # extension characters cost two septets
        ("€" * 81, "GSM-7", 2, 162),
        ("a" * 152 + "€" + "a" * 152, "GSM-7", 3, 306),  # ESC never split at a part boundary
        ("я" * 70, "UCS-2", 1, 70),
        ("я" * 71, "UCS-2", 2, 71),
        ("😀" * 35, "UCS-2", 1, 70),  # surrogate pairs are two units
        ("😀" * 36, "UCS-2", 2, 72),
        ("a" * 66 + "😀" + "a" * 66, "UCS-2", 3, 134),  # a pair never split
        ("", "GSM-7", 1, 0),
    ],
)
def test_segments(text: str, encoding: str, segments: int, units: int) -> None:
    info = analyse(text)
    assert (info.encoding, info.segments, info.units) == (encoding, segments, units)
    assert "".join(info.parts) == text


def test_parts_respect_limits() -> None:
    info = analyse("a" * 152 + "€" + "a" * 152)
    assert [len(p) for p in info.parts] == [152, 152, 1]  # part 2 is € (2 septets) + 151 = 153 septets
    assert info.parts[1].startswith("€")
    emoji = analyse("a" * 66 + "😀" + "a" * 66)
    assert emoji.parts[0] == "a" * 66 and emoji.parts[1].startswith("😀")


def test_smart_replacement_keeps_gsm7() -> None:
    text = "“Hello” — it’s… here"
    assert analyse(text).encoding == "UCS-2"
    info = analyse(text, smart=True)
    assert info.encoding == "GSM-7"
    assert info.text == '"Hello" - it\'s... here'


def test_smart_replacement_leaves_real_unicode_alone() -> None:
    text = "“Привет”"
    assert smart_replace(text) == text  # still UCS-2 after replacing: keep the original


# --- the fast paths agree with the per-character definition ------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from shared.sms import encoding as enc  # noqa: E402

_ALPHABET = "aZ09 @£$¥èéùìòÇØøÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ!\"#%&'()*+,-./:;<=>?¡ÄÖÑÜ§¿äöñüà\n\r€[]{}|^~\\яж😀’“”–…\u00a0\u200bç"


def slow_analyse(text: str, smart: bool) -> enc.SegmentInfo:
    if smart:
        replaced = "".join(enc.SMART_REPLACEMENTS.get(c, c) for c in text)
        text = replaced if all(enc.gsm_septets(c) for c in replaced) else text
    septets = [enc.gsm_septets(c) for c in text]
    if all(septets):
        parts = enc.split_parts(text, septets, enc.GSM_SINGLE, enc.GSM_MULTI)
        return enc.SegmentInfo("GSM-7", max(1, len(parts)), len(text), sum(septets), text, parts)
    units = [2 if ord(c) > 0xFFFF else 1 for c in text]
    parts = enc.split_parts(text, units, enc.UCS2_SINGLE, enc.UCS2_MULTI)
    return enc.SegmentInfo("UCS-2", max(1, len(parts)), len(text), sum(units), text, parts)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=400), st.booleans())
def test_fast_paths_agree_with_the_definition(text: str, smart: bool) -> None:
    assert enc.analyse(text, smart=smart) == slow_analyse(text, smart)
    assert enc.is_gsm7(text) == all(enc.gsm_septets(c) for c in text)


def test_one_septet_set_is_exactly_the_default_alphabet() -> None:
    assert len(enc.GSM_ONE_SEPTET) == 127  # 128 code points less the escape
    assert all(enc.gsm_septets(c) == 1 for c in enc.GSM_ONE_SEPTET)
    assert "€" not in enc.GSM_ONE_SEPTET and "{" not in enc.GSM_ONE_SEPTET and "ç" not in enc.GSM_ONE_SEPTET
