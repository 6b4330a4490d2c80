"""`herald segments TEXT` on a table of tricky cases (GSM 03.38 rules)."""

import json

import pytest

from herald_tools.cli import main

CASES = [
    # text, encoding, segments, characters
    ("a" * 160, "GSM-7", 1, 160),  # exactly one segment
    ("a" * 161, "GSM-7", 2, 161),  # one more: two parts of ≤153
    ("a" * 159 + "€", "GSM-7", 2, 160),  # the escape makes it 161 septets
    ("a" * 152 + "€" + "a" * 152, "GSM-7", 3, 305),  # € never split at the part boundary
    ("{}[]~^|\\" * 10, "GSM-7", 1, 80),  # 80 extension characters = 160 septets
    ("ж" * 70, "UCS-2", 1, 70),  # exactly 70 units
    ("ж" * 71, "UCS-2", 2, 71),
    ("😀" * 35, "UCS-2", 1, 35),  # 35 emoji = 70 units
    ("a" * 66 + "😀" + "a" * 66, "UCS-2", 3, 133),  # a surrogate pair never split
    ("“Smart” quotes — and… dots", "GSM-7", 1, 28),  # smart replacement keeps GSM-7 (… becomes ...)
    ("Ça va? ç", "GSM-7", 1, 8),  # ç has no GSM code: replaced by Ç
]


@pytest.mark.parametrize(("text", "encoding", "segments", "characters"), CASES)
def test_segments_command(capsys, text: str, encoding: str, segments: int, characters: int) -> None:
    assert main(["segments", text]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["encoding"], out["segments"], out["characters"]) == (encoding, segments, characters)
    assert len(out["parts"]) == segments


def test_smart_replacement_can_be_turned_off(capsys) -> None:
    main(["segments", "--no-smart", "“quoted”"])
    out = json.loads(capsys.readouterr().out)
    assert out["encoding"] == "UCS-2" and out["text"] == "“quoted”"
    main(["segments", "“quoted”"])
    assert json.loads(capsys.readouterr().out)["text"] == '"quoted"'
