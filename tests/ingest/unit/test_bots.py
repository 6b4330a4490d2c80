"""Bot and link-preview detection on short-link requests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.ingest.bots import classify

NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
SENT = NOW - timedelta(minutes=5)
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.4 Mobile/15E148 Safari/604.1")
ANDROID = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
           "Mobile Safari/537.36")


@pytest.mark.parametrize("agent", [IPHONE, ANDROID, ANDROID + " Instagram 330.0.0.40.92"])
def test_people_are_people(agent: str) -> None:
    assert classify("GET", {"user-agent": agent}, NOW, SENT) is None


@pytest.mark.parametrize(
    "agent",
    [
        "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
        "facebookexternalhit/1.1 Facebot Twitterbot/1.0",  # iMessage link previews
        "WhatsApp/2.23.20.0",
        "TelegramBot (like TwitterBot)",
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
        "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5",
        "curl/8.5.0",
        "python-requests/2.32.3",
        "Mozilla/5.0 (compatible; SomeCrawler/1.0)",
    ],
)
def test_preview_fetchers_are_bots(agent: str) -> None:
    assert classify("GET", {"user-agent": agent}, NOW, SENT) == "preview_agent"


def test_reasons_in_order() -> None:
    assert classify("HEAD", {"user-agent": IPHONE}, NOW, SENT) == "head_request"
    assert classify("GET", {"user-agent": IPHONE, "purpose": "prefetch"}, NOW, SENT) == "prefetch"
    assert classify("GET", {"user-agent": IPHONE, "sec-purpose": "prefetch;prerender"}, NOW, SENT) == "prefetch"
    assert classify("GET", {"user-agent": IPHONE, "x-purpose": "preview"}, NOW, SENT) == "prefetch"
    assert classify("GET", {}, NOW, SENT) == "no_user_agent"
    assert classify("GET", {"user-agent": "  "}, NOW, SENT) == "no_user_agent"


def test_a_click_within_a_second_of_sending_is_too_fast() -> None:
    assert classify("GET", {"user-agent": IPHONE}, NOW, NOW - timedelta(milliseconds=400)) == "too_fast"
    assert classify("GET", {"user-agent": IPHONE}, NOW, NOW - timedelta(milliseconds=1500)) is None
    assert classify("GET", {"user-agent": IPHONE}, NOW, NOW - timedelta(seconds=3), min_delay_s=5) == "too_fast"
    assert classify("GET", {"user-agent": IPHONE}, NOW, None) is None
