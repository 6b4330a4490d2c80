"""Every error code the services raise is in the catalogue (shared/errors.py), and docs/errors.md
is generated from it."""

from __future__ import annotations

import re
from pathlib import Path

from shared.errors import CATALOGUE, markdown

ROOT = Path(__file__).resolve().parents[2]
# The constructors whose code ends up as an answer's ``error.code`` (ApiError and AuthError
# directly; the others are turned into ApiError with their code), and the bare answers.
PATTERNS = [
    re.compile(r'\bApiError\(\s*[^,()]+,\s*f?"([a-z][a-z0-9_]*)"'),
    re.compile(r'\b(?:AuthError|CampaignError)\(\s*\d+,\s*"([a-z][a-z0-9_]*)"'),
    re.compile(r'\b(?:PhoneError|SignatureError|Rejection|TemplateError|ImportAborted)\(\s*"([a-z][a-z0-9_]*)"'),
    re.compile(r'\bRowError\(\s*[^,()]+,\s*"([a-z][a-z0-9_]*)"'),
    re.compile(r'\b_answer\(\s*send,\s*\d+,\s*"([a-z][a-z0-9_]*)"'),
    re.compile(r'\berror_body\(\s*"([a-z][a-z0-9_]*)"'),
    re.compile(r'\b\d{3}: "([a-z][a-z0-9_]*)"'),  # shared/api.py: status -> code for HTTP errors
    re.compile(r'problems\.append\(\{"loc": [^,]+, "code": "([a-z][a-z0-9_]*)"'),  # campaign bodies
]


def raised_codes() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    files = [*ROOT.joinpath("services").rglob("*.py"), *ROOT.joinpath("shared").rglob("*.py")]
    for path in files:
        if "simulator" in path.parts:  # the test gateway's own API, not Herald's
            continue
        text = path.read_text()
        for pattern in PATTERNS:
            for m in pattern.finditer(text):
                found.setdefault(m.group(1), set()).add(str(path.relative_to(ROOT)))
    return found


def test_the_scan_finds_the_codes() -> None:
    codes = raised_codes()
    for code in ("message_not_found", "not_suppressed", "version_conflict", "empty_batch", "unparseable_number",
                 "signature_invalid", "missing_api_key", "bad_content_length", "unsupported_media_type",
                 "empty_import", "unclosed_quote"):
        assert code in codes, code


def test_every_raised_code_is_in_the_catalogue() -> None:
    missing = {code: sorted(where) for code, where in raised_codes().items() if code not in CATALOGUE}
    assert not missing, f"add these codes to shared/errors.py CATALOGUE and regenerate docs/errors.md: {missing}"


def test_every_catalogue_entry_has_a_status_and_a_meaning() -> None:
    for code, entry in CATALOGUE.items():
        assert entry.statuses and all(400 <= s < 600 for s in entry.statuses), code
        assert entry.description.strip(), code


def test_docs_errors_md_is_current() -> None:
    doc = ROOT / "docs" / "errors.md"
    assert doc.read_text() == markdown(), "regenerate: python -m shared.errors > docs/errors.md"
