"""Consent: which record is a contact's current consent. Pure, no I/O.

A contact's consent for a purpose (marketing, transactional) is its newest record by the time
the person gave or withdrew it (``occurred_at``), not by when Herald heard of it: a late-arriving
older record joins the history but does not change the current state. On a tie the later
arrival wins. Every path that records consent (the contacts API and imports, STOP/START
keywords: docs/audience.md, docs/replies.md) asks this one rule.
"""

from __future__ import annotations

from datetime import datetime


def becomes_current(occurred_at: datetime, current_at: datetime | None) -> bool:
    """Whether a consent record given at ``occurred_at`` replaces the current one, given at
    ``current_at`` (None: the contact has none for the purpose yet). Newest consent wins."""
    return current_at is None or occurred_at >= current_at
