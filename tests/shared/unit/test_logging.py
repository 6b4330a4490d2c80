import json
import logging

from shared.logging import JsonFormatter, mask_phone, mask_text


def test_mask_phone() -> None:
    assert mask_phone("+34600123456") == "+34******456"


def test_mask_text_finds_numbers() -> None:
    assert mask_text("sent to +34600123456 and 14155550123") == "sent to +34******456 and 141*****123"
    assert mask_text("batch of 500 in 12 ms") == "batch of 500 in 12 ms"


def test_json_formatter_masks_extras() -> None:
    record = logging.makeLogRecord({"msg": "to %s", "args": ("+34600123456",), "levelname": "INFO", "to": "+34600123456"})
    entry = json.loads(JsonFormatter("test").format(record))
    assert "+34600123456" not in json.dumps(entry)
    assert entry["msg"] == "to +34******456"


def test_dates_and_times_are_not_masked() -> None:
    assert mask_text("2026-11-25 15:46:23,914 offset 1234") == "2026-11-25 15:46:23,914 offset 1234"
    assert mask_text("+34 600 123 456") == "+34*********456"


def test_text_formatter_masks_only_the_message() -> None:
    from shared.logging import TextFormatter

    record = logging.makeLogRecord({"msg": "to +34600123456", "levelname": "INFO", "name": "x"})
    line = TextFormatter("svc").format(record)
    assert "+34******456" in line and "+34600123456" not in line
