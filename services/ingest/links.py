"""Link tracking, the pure part: find URLs in a body and replace each by a short tracked link.

``rewrite(body, message_id, domain)`` returns the new body and one :class:`Link` per URL
(in order). A link's code is derived from (message id, link index), so accepting the same
message again (a retry, an idempotency-key duplicate) gives the same body and the same
codes. The rewrite runs before the text is measured, so the short link's length is what
counts in segments (``track_message``). Used by the Acceptor (API and trigger paths) and
the campaign launcher; the rows are stored with :class:`services.ingest.links_repo.LinksRepository`.

Only explicit links are tracked: ``http://…``, ``https://…`` and ``www.…``. A bare domain
(``shop.example/sale``) is left alone: too many false positives (``e.g.``, prices, times).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from shared.contracts import MessageAccepted
from shared.sms.encoding import analyse

CODE_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CODE_LENGTH = 10  # 62^10 ≈ 8.4e17: a billion links collide with probability ~6e-4
MAX_LINKS = 20
MAX_URL_CHARS = 2048
CODE_PATTERN = re.compile(rf"^[0-9A-Za-z]{{{CODE_LENGTH}}}$")

_URL = re.compile(r"(?i)\b(?:https?://|www\.)[^\s<>\"'`]+")
_TRAILING = ".,;:!?'\"*_"
_PAIRS = {")": "(", "]": "[", "}": "{"}


@dataclass(frozen=True, slots=True)
class Link:
    index: int  # position among the message's tracked links, from 0
    code: str
    url: str  # where the short link redirects (scheme added to www. links)
    short: str  # the text that replaced it in the body


@dataclass(frozen=True, slots=True)
class LinkRecord:
    """A link row as stored: the link and the message it belongs to."""

    code: str
    tenant_id: str
    message_id: uuid.UUID
    index: int
    url: str
    contact_id: uuid.UUID | None
    campaign_id: uuid.UUID | None
    variant: str | None
    journey_id: uuid.UUID | None
    created_at: datetime


def link_code(message_id: uuid.UUID, index: int, length: int = CODE_LENGTH) -> str:
    """A short base62 code, a hash of (message id, index): the same inputs, the same code.

    Message ids are random (UUIDv4, 122 bits), so a code cannot be guessed from anything
    a stranger knows; 10 base62 characters carry 59 bits of the hash.
    """
    digest = int.from_bytes(hashlib.sha256(message_id.bytes + index.to_bytes(2, "big")).digest()[:12], "big")
    chars = []
    for _ in range(length):
        digest, rest = divmod(digest, 62)
        chars.append(CODE_ALPHABET[rest])
    return "".join(chars)


def _trim(url: str) -> str:
    """Drop punctuation that ends a sentence rather than the URL, and unbalanced closers."""
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last in _PAIRS and url.count(last) > url.count(_PAIRS[last]):
            url = url[:-1]
        else:
            break
    return url


def find_urls(body: str) -> list[tuple[int, int, str]]:
    """(start, end, url) of every URL in ``body``, in order."""
    found = []
    for match in _URL.finditer(body):
        url = _trim(match.group(0))
        if len(url) <= len("https://") or url.lower() in ("http://", "https://", "www."):
            continue
        found.append((match.start(), match.start() + len(url), url))
    return found


def short_link(domain: str, code: str) -> str:
    return f"https://{domain}/{code}"


def rewrite(body: str, message_id: uuid.UUID, domain: str) -> tuple[str, list[Link]]:
    """Replace each URL in ``body`` (up to ``MAX_LINKS``) by ``https://{domain}/{code}``.

    URLs already on ``domain`` and URLs longer than ``MAX_URL_CHARS`` are left as they are.
    """
    own = (f"https://{domain}/".lower(), f"http://{domain}/".lower())
    pieces: list[str] = []
    links: list[Link] = []
    position = 0
    for start, end, url in find_urls(body):
        if len(links) >= MAX_LINKS:
            break
        if url.lower().startswith(own) or len(url) > MAX_URL_CHARS:
            continue
        target = url if "://" in url[:8] else f"https://{url}"
        code = link_code(message_id, len(links))
        short = short_link(domain, code)
        links.append(Link(len(links), code, target, short))
        pieces += [body[position:start], short]
        position = end
    if not links:
        return body, []
    pieces.append(body[position:])
    return "".join(pieces), links


def track_message(message: MessageAccepted, domain: str, *, smart: bool) -> tuple[MessageAccepted, list[Link]]:
    """``message`` with its links rewritten, its encoding and segments measured again."""
    body, links = rewrite(message.body, message.message_id, domain)
    if not links:
        return message, []
    info = analyse(body, smart=smart)
    updated = message.model_copy(update={"body": info.text, "encoding": info.encoding, "segments": info.segments})
    return updated, links


def records(tenant_id: str, message: MessageAccepted, links: list[Link]) -> list[LinkRecord]:
    return [
        LinkRecord(
            code=link.code, tenant_id=tenant_id, message_id=message.message_id, index=link.index, url=link.url,
            contact_id=message.contact_id, campaign_id=message.campaign_id, variant=message.variant,
            journey_id=message.journey_id, created_at=message.accepted_at,
        )
        for link in links
    ]
