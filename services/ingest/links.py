"""Link tracking, the pure part: find URLs in a body and replace each by a short tracked link.

``rewrite(body, domain)`` returns the new body and one :class:`Link` per URL (in order). Each
code is random (``secrets``): nothing a tenant knows (the message id, the body) gives it away
before the message is sent. A retried accept or a resumed campaign page draws new codes, but the
rows are stored insert-or-get on (message id, link index): the codes already stored win, and
``swap_codes`` puts them back in the body (codes all have the same length, so the segments do
not change). The rewrite runs before the text is measured, so the short link's length is what
counts in segments (``track_message``). Used by the Acceptor (API and trigger paths) and the
campaign launcher; the rows are stored with :class:`services.ingest.links_repo.LinksRepository`.

Only explicit links are tracked: ``http://…``, ``https://…`` and ``www.…``. A bare domain
(``shop.example/sale``) is left alone: too many false positives (``e.g.``, prices, times).

Whether a stored link may redirect (``refusal``) is decided here too: only once its message was
submitted, before it expires, on the domain it was minted for, and unless an operator took it
down (docs/results.md, "Link safety").
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.contracts import MessageAccepted
from shared.sms.encoding import analyse
from shared.statuses import MessageType, Status
from shared.tenant_admin import check_link_domain as check_domain  # noqa: F401  (HERALD_LINK_DOMAIN, a tenant's own)

CODE_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CODE_LENGTH = 10  # 62^10 ≈ 8.4e17 (59.5 bits): a guess hits one of a billion live links with p ≈ 1.2e-9
DEFAULT_TTL = timedelta(days=90)
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
    expires_at: datetime
    domain: str | None  # the tenant's own link domain; None: the shared one


def new_code(length: int = CODE_LENGTH) -> str:
    """A random base62 code (``secrets``: unpredictable, unrelated to the message)."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


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


def has_urls(body: str) -> bool:
    """Whether ``body`` may hold a URL to track (cheap: no trimming)."""
    return _URL.search(body) is not None


def short_link(domain: str, code: str) -> str:
    return f"https://{domain}/{code}"


def rewrite(body: str, domain: str, codes: Sequence[str] | None = None) -> tuple[str, list[Link]]:
    """Replace each URL in ``body`` (up to ``MAX_LINKS``) by ``https://{domain}/{code}``.

    ``codes``: the code of each link in order (default: new random ones). URLs already on
    ``domain`` and URLs longer than ``MAX_URL_CHARS`` are left as they are.
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
        code = codes[len(links)] if codes is not None else new_code()
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
    body, links = rewrite(message.body, domain)
    if not links:
        return message, []
    info = analyse(body, smart=smart)
    updated = message.model_copy(update={"body": info.text, "encoding": info.encoding, "segments": info.segments})
    return updated, links


def swap_codes(message: MessageAccepted, domain: str, replaced: Mapping[str, str]) -> MessageAccepted:
    """``message`` with the short links whose code lost to a stored one (``replaced``: drawn code
    → stored code, from ``LinksRepository.store_many``) pointing at the stored code. Codes all
    have ``CODE_LENGTH`` base62 characters, so the encoding and segments stay as they are."""
    body = message.body
    for drawn, stored in replaced.items():
        body = body.replace(short_link(domain, drawn), short_link(domain, stored))
    return message if body == message.body else message.model_copy(update={"body": body})


def records(
    tenant_id: str,
    message: MessageAccepted,
    links: list[Link],
    *,
    ttl: timedelta = DEFAULT_TTL,
    domain: str | None = None,
) -> list[LinkRecord]:
    """The rows of a message's links: they expire ``ttl`` after its acceptance; ``domain``: the
    tenant's own link domain they were minted on (None: the shared domain)."""
    return [
        LinkRecord(
            code=link.code, tenant_id=tenant_id, message_id=message.message_id, index=link.index, url=link.url,
            contact_id=message.contact_id, campaign_id=message.campaign_id, variant=message.variant,
            journey_id=message.journey_id, created_at=message.accepted_at, expires_at=message.accepted_at + ttl,
            domain=domain,
        )
        for link in links
    ]


# ---- which links a batch of status events activates ----

# A gateway took the message (``unknown``: it may have; the SMS may be out). Never ``suppressed``,
# ``failed`` before submission, ``rejected``: those were refused, and their links stay dark.
ACTIVATING = frozenset({Status.SUBMITTED, Status.UNKNOWN})
SANDBOX_GATEWAY = "sandbox"  # a test key's message: nothing reached a handset, nothing to follow


def activations(statuses: Iterable[tuple[uuid.UUID, Status, str | None, MessageType | None, datetime]]
                ) -> dict[uuid.UUID, datetime]:
    """message id → when it was submitted, for the (message id, status, gateway, type, time) of a
    batch of status events that activate links: submitted (or unknown) marketing messages sent to a
    real gateway. The earliest time wins when a message appears twice."""
    out: dict[uuid.UUID, datetime] = {}
    for message_id, status, gateway, type_, at in statuses:
        if status not in ACTIVATING or gateway == SANDBOX_GATEWAY or type_ is MessageType.TRANSACTIONAL:
            continue
        if message_id not in out or at < out[message_id]:
            out[message_id] = at
    return out


# ---- may a stored link redirect? ----

NOT_ACTIVE = "not_active"  # its message was not submitted (yet, or ever): 404, as an unknown code
WRONG_DOMAIN = "wrong_domain"  # minted on a tenant's own domain, asked on another host: 404
TAKEN_DOWN = "taken_down"  # an operator took it down: 410 link_taken_down
EXPIRED = "expired"  # past expires_at: 410 link_expired
REFUSALS = (NOT_ACTIVE, WRONG_DOMAIN, TAKEN_DOWN, EXPIRED)


def host_of(domain: str) -> str:
    """The host (with :port if it has one) of a link domain, which may carry a path."""
    return domain.split("/", 1)[0].lower()


def same_host(domain: str, host: str | None) -> bool:
    """Whether a request's ``Host`` is the link domain's host (its port is ignored unless the
    domain names one)."""
    if not host:
        return False
    wanted, host = host_of(domain), host.strip().lower().rstrip(".")
    if ":" not in wanted and not host.startswith("["):
        host = host.rsplit(":", 1)[0]
    return host == wanted


def refusal(
    *,
    activated_at: datetime | None,
    expires_at: datetime,
    domain: str | None,
    taken_down_at: datetime | None,
    host: str | None,
    now: datetime,
) -> str | None:
    """Why a stored link must not redirect now (one of ``REFUSALS``), or None: it may."""
    if domain is not None and not same_host(domain, host):
        return WRONG_DOMAIN
    if taken_down_at is not None:
        return TAKEN_DOWN
    if activated_at is None:
        return NOT_ACTIVE
    if now >= expires_at:
        return EXPIRED
    return None
