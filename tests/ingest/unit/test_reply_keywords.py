"""Inbound keywords: normalisation, groups in two languages each, tenant additions, replies."""

from __future__ import annotations

import pytest

from services.ingest.replies.handler import opt_scope
from services.ingest.replies.keywords import (
    Keyword,
    classify,
    normalise,
    normalise_keyword,
    reply_language,
    reply_text,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Arrêt", "ARRET"),
        ("  ¡Baja!  ", "BAJA"),
        ("stop.", "STOP"),
        ("ＳＴＯＰ", "STOP"),  # full-width letters (NFKD)
        ("Arrêter, s'il vous plaît", "ARRETER S IL VOUS PLAIT"),
        ("", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("body", "group", "language"),
    [
        # STOP: English, Spanish, French, Portuguese
        ("stop", "stop", "en"),
        ("Unsubscribe please", "stop", "en"),
        ("baja", "stop", "es"),
        ("ALTO!", "stop", "es"),
        ("ARRÊT", "stop", "fr"),
        ("arret", "stop", "fr"),
        ("Parar", "stop", "pt"),
        # START: English, Spanish
        ("Start", "start", "en"),
        ("unstop", "start", "en"),
        ("yes", "start", "en"),
        ("Alta", "start", "es"),
        # HELP: English, Spanish, French
        ("help", "help", "en"),
        ("INFO?", "help", "en"),
        ("Ayuda", "help", "es"),
        ("aide", "help", "fr"),
    ],
)
def test_groups_in_several_languages(body: str, group: str, language: str) -> None:
    match = classify(body)
    assert match is not None and match.group == group and match.language == language


@pytest.mark.parametrize("body", ["Thanks, see you tomorrow", "What time is my appointment?", "", "  ...  ", "stopping by later"])
def test_ordinary_replies_are_not_keywords(body: str) -> None:
    assert classify(body) is None


def test_stop_argument_and_everything() -> None:
    m = classify("STOP acme")
    assert m is not None and m.argument == "ACME" and not m.everything
    assert classify("stopall").everything  # type: ignore[union-attr]
    assert classify("Stop all").everything  # type: ignore[union-attr]
    assert classify("baja todo").everything  # type: ignore[union-attr]
    assert not classify("start all").everything  # type: ignore[union-attr]


def test_tenant_additions_win_and_are_normalised() -> None:
    extra = {normalise_keyword("Désinscrire"): Keyword("stop", ("fr",)), "INFO": Keyword("start", ("en",))}
    assert classify("desinscrire", extra).group == "stop"  # type: ignore[union-attr]
    assert classify("Info", extra).group == "start"  # type: ignore[union-attr]
    assert classify("Info") .group == "help"  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        normalise_keyword("two words")


def test_reply_language_prefers_contact_then_keyword() -> None:
    baja = classify("baja")
    stop = classify("stop")
    assert baja is not None and stop is not None
    assert reply_language(baja) == "es"
    assert reply_language(stop) == "en"
    assert reply_language(stop, "fr-CA") == "fr"
    assert reply_language(baja, "xx") == "es"  # no texts in xx: the keyword's language


def test_reply_texts() -> None:
    assert reply_text("stop", "en", "Acme") == "You are unsubscribed from Acme messages. Reply START to resubscribe."
    assert "Acme" in reply_text("stop", "es", "Acme") and "ALTA" in reply_text("stop", "es", "Acme")
    assert "STOP" in reply_text("start", "fr", "Acme")
    assert reply_text("help", "zz", "Acme").startswith("Acme: reply STOP")


def test_opt_scope() -> None:
    stop = classify("STOP")
    assert stop is not None
    assert opt_scope(stop, None, {"shoes"}) is None  # unscoped number: global
    assert opt_scope(stop, "shoes", {"shoes"}) == "shoes"  # scoped number: that scope
    assert opt_scope(classify("STOP shoes"), None, {"shoes", "bags"}) == "shoes"  # type: ignore[arg-type]
    assert opt_scope(classify("STOP unknownbrand"), None, {"shoes"}) is None  # type: ignore[arg-type]
    assert opt_scope(classify("STOPALL"), "shoes", {"shoes"}) is None  # type: ignore[arg-type]


def test_scheduler_respects_scoped_opt_out_only_for_that_scope_sender() -> None:
    import uuid
    from datetime import UTC, datetime

    from services.scheduler.domain import Facts, Verdict, suppression_policy
    from shared.contracts import MessageAccepted, utcnow

    def msg(kind: str, sender: str | None) -> MessageAccepted:
        return MessageAccepted(message_id=uuid.uuid4(), to="+34600000001", country="ES", body="x", type=kind,
                               encoding="GSM-7", segments=1, source="api", accepted_at=utcnow(), sender=sender)

    facts = Facts(scoped_suppressions={("acme", "+34600000001", "Shoes"): "replied STOP"})
    now = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    decision = suppression_policy("acme", msg("marketing", "Shoes"), facts, now)
    assert decision is not None and decision.verdict is Verdict.SUPPRESS and "scope" in (decision.reason or "")
    assert suppression_policy("acme", msg("marketing", "Bags"), facts, now) is None
    assert suppression_policy("acme", msg("marketing", None), facts, now) is None
    assert suppression_policy("acme", msg("transactional", "Shoes"), facts, now) is None
    assert suppression_policy("other", msg("marketing", "Shoes"), facts, now) is None
