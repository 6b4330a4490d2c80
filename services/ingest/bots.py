"""Is a click a person, or a bot / link preview? Pure: the request's facts in, a reason out.

Messaging apps, mail scanners and social networks fetch links to draw previews, and
browsers prefetch them; none of those is a person clicking. A click is flagged with the
first reason that applies, and still recorded (reports excludes bots from click counts).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

# Link-preview fetchers, crawlers and HTTP libraries (matched case-insensitively as substrings).
PREVIEW_AGENTS = (
    "facebookexternalhit", "facebot", "twitterbot", "slackbot", "slack-imgproxy", "whatsapp", "telegrambot",
    "discordbot", "linkedinbot", "skypeuripreview", "pinterest", "redditbot", "embedly", "applebot",
    "googlebot", "google-inspectiontool", "adsbot-google", "bingbot", "bingpreview", "yandexbot", "duckduckbot",
    "baiduspider", "line-poker", "kakaotalk-scrap", "microsoftpreview", "ms-office", "skypeuripreview",
    "mattermost", "iframely", "vkshare", "headlesschrome", "phantomjs",
    "curl/", "wget/", "python-requests", "python-httpx", "aiohttp", "go-http-client", "java/", "okhttp",
    "libwww-perl", "httpclient", "axios/", "node-fetch", "postmanruntime",
)
_GENERIC = re.compile(r"bot\b|bot/|crawler|spider|preview|scanner|fetcher|monitor", re.I)
_AGENTS = re.compile("|".join(re.escape(a) for a in PREVIEW_AGENTS), re.I)


def classify(
    method: str,
    headers: Mapping[str, str],
    clicked_at: datetime,
    sent_at: datetime | None,
    min_delay_s: float = 1.0,
) -> str | None:
    """The reason this click is not a person's (``None``: a person's).

    ``headers`` has lower-case names. ``sent_at``: when the message left (or was accepted);
    a click within ``min_delay_s`` of it came before any person could have read the text.
    """
    if method.upper() == "HEAD":
        return "head_request"
    purpose = " ".join(headers.get(h, "") for h in ("purpose", "sec-purpose", "x-purpose", "x-moz")).lower()
    if "prefetch" in purpose or "preview" in purpose:
        return "prefetch"
    agent = headers.get("user-agent", "").strip()
    if not agent:
        return "no_user_agent"
    if _AGENTS.search(agent) or _GENERIC.search(agent):
        return "preview_agent"
    if sent_at is not None and (clicked_at - sent_at).total_seconds() < min_delay_s:
        return "too_fast"
    return None
