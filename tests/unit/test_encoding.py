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
