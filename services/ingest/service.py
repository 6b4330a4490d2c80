"""ingest's application service: requests in, accepted events (or reasons) out.

Shared by the HTTP API and the trigger-topic consumer, so both paths validate alike.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from services.ingest import metrics
from services.ingest.domain import OptOut, Rejection, accept, request_hash
from services.ingest.fair_share import PriorityShare
from services.ingest.links import LinkRecord, has_urls, records, swap_codes, track_message
from services.ingest.links_repo import LinksRepository
from services.ingest.repository import IngestRepository
from services.ingest.settings import IngestSettings
from services.ingest.template_sends import render_send, template_key
from shared.contracts import (
    MessageAccepted,
    MessageAcceptedEvent,
    MessageRequest,
    MessageStatusChanged,
    MessageStatusEvent,
    derived_event_id,
)
from shared.egress import MESSAGES, CachedResolve, EgressPolicy, check_urls
from shared.geo import GeoPolicy
from shared.kafka import YIELD_EVERY, Outgoing
from shared.phones import PhoneError, parse_e164
from shared.senders import SenderBook
from shared.senders import load_rules as load_sender_rules
from shared.statuses import MessageType, Status
from shared.topics import STATUS, accepted_topic

log = logging.getLogger(__name__)
_E164 = re.compile(r"\+[0-9]{4,15}")


@dataclass(frozen=True, slots=True)
class Accepted:
    message: MessageAccepted
    duplicate: bool


Result = Accepted | Rejection
#: Where an accepted message came from: the HTTP API, the trigger topic, a journey's send step
#: (the journey-sends lane). Campaigns are accepted by the launcher (services/ingest/campaigns/).
Source = Literal["api", "kafka", "journey"]


def accepted_event(tenant: str, message: MessageAccepted, trace_id: str) -> Outgoing:
    # A message is accepted once, so its id is the event's id: stable when published again.
    # Built without re-validation: every field was validated or computed just before.
    event = MessageAcceptedEvent.model_construct(
        event_id=message.message_id,
        type="message.accepted",
        version=1,
        occurred_at=message.accepted_at,
        tenant=tenant,
        trace_id=trace_id,
        payload=message,
    )
    lane = accepted_topic(message)
    return Outgoing(lane, message.to, event)


def failed_status(
    tenant: str,
    message_id: uuid.UUID,
    rejection: Rejection,
    *,
    fact: str,
    occurred_at: datetime,
    trace_id: str,
    type: MessageType,
    detail: dict[str, str],
    campaign: tuple[uuid.UUID, str, uuid.UUID] | None = None,
) -> Outgoing:
    """The ``failed`` status of a message ingest refused on a path with no caller to answer (a
    journey's send step, a campaign's contact): its timeline shows the reason. ``fact`` names the
    path; with the message id it makes the event id, so a refusal published again lands once.
    ``campaign``: (campaign id, variant, contact id) of a refused campaign contact, which its
    campaign's report counts."""
    campaign_fields = {} if campaign is None else dict(zip(("campaign_id", "variant", "contact_id"), campaign, strict=True))
    event = MessageStatusEvent(
        event_id=derived_event_id(message_id, fact),
        occurred_at=occurred_at,
        tenant=tenant,
        trace_id=trace_id,
        payload=MessageStatusChanged(
            message_id=message_id, status=Status.FAILED, reason_code=rejection.code, reason=rejection.message,
            type=type, detail=detail, **campaign_fields,
        ),
    )
    return Outgoing(STATUS, str(message_id), event)


class Acceptor:
    def __init__(
        self, repository: IngestRepository, settings: IngestSettings, links: LinksRepository | None = None
    ) -> None:
        self.repository = repository
        self.allowed_types = frozenset(settings.allowed_number_types)
        self.smart_encoding = settings.smart_encoding
        # Link tracking (services/ingest/links.py) needs somewhere to store the links.
        self.links = links if settings.link_tracking else None
        self.link_domain = settings.link_domain
        self.link_ttl_s = settings.link_ttl_s
        self.egress = EgressPolicy.of(settings)
        self.resolve = CachedResolve()
        self.sender_rules = load_sender_rules()
        self.geo_rules = settings.geo_rules()
        self.share = PriorityShare(settings.priority_share_per_s, settings.priority_share_burst,
                                   dict(settings.priority_share_tenants))
        self._share_warned: dict[str, float] = {}

    async def prepare(
        self,
        tenant: str,
        requests: list[MessageRequest | Rejection],
        *,
        source: Source,
        now: datetime,
        trace_id: str,
        default_keys: list[str | None] | None = None,
        message_ids: list[uuid.UUID] | None = None,
        replayed: bool = False,
        geo: GeoPolicy | None = None,
        sandbox: bool = False,
        senders: SenderBook | None = None,
        stamps: list[dict[str, Any]] | None = None,
        rendered: bool = False,
    ) -> tuple[list[Result], list[Outgoing]]:
        """Validate, apply idempotency keys, and build the events to publish (in request order).

        ``default_keys`` gives an idempotency key for requests that carry none (the trigger
        consumer passes ``event:<event id>`` so a redelivered trigger is never sent twice).
        ``message_ids`` gives each request its id (a batch's, derived from its key) and
        ``replayed`` says that batch was seen before (its messages are duplicates). ``geo``: the
        tenant's geo permissions; a destination they refuse is a ``destination_not_allowed``
        rejection (None: not checked, e.g. a reply to a number that wrote in). ``senders``: the
        tenant's sender registry; a ``sender`` that is not one of its verified senders allowed for
        the destination is refused (shared/senders.py; None: not checked, as for ``geo``).
        ``stamps``: per request, fields set on its accepted message that a request cannot carry (a
        journey send's ``contact_id``, ``journey_id``, ``template_id``). ``rendered``: the texts were
        rendered by the caller, opt-out line included (journey sends): no opt-out line is added.
        """
        results: list[Result] = []
        keyed: dict[str, list[int]] = {}
        hashes: dict[str, str] = {}
        originals = requests  # idempotency keys fingerprint the request as sent, not as rendered
        # status callbacks go to public destinations only (shared/egress.py): each host checked once
        opt_out, link_policy = (None, None) if rendered else await self._marketing_context(tenant, requests)
        requests, sent_by_template = await self._render_templates(tenant, requests)
        refused = await check_urls({str(r.status_callback_url) for r in requests
                                    if not isinstance(r, Rejection) and r.status_callback_url}, self.egress,
                                   resolve=self.resolve)
        # sender pools: the batch's recipients' sticky senders, one query (none without a pool)
        sticky = await self._sticky(tenant, requests)

        def accept_one(index: int, request: MessageRequest) -> MessageAccepted:
            return accept(
                request,
                message_id=message_ids[index] if message_ids else uuid.uuid4(),
                now=now,
                source=source,
                allowed_types=self.allowed_types,
                smart_encoding=self.smart_encoding,
                geo=geo,
                geo_rules=self.geo_rules,
                # a template's text has its opt-out line from the renderer, as in campaigns
                opt_out=None if index in sent_by_template else opt_out,
                senders=senders,
                sender_rules=self.sender_rules,
                sticky=sticky,
            )

        for index, request in enumerate(requests):
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a 10,000-message batch must not stall other requests
            if isinstance(request, Rejection):
                results.append(request)
                continue
            if request.status_callback_url and str(request.status_callback_url) in refused:
                results.append(callback_refused(refused[str(request.status_callback_url)]))
                continue
            try:
                message = accept_one(index, request)
            except Rejection as rejection:
                results.append(rejection)
                continue
            if stamps is not None and stamps[index]:
                message = message.model_copy(update=stamps[index])
            if message.sender_pool is not None and message.sender is not None:
                sticky[(message.sender_pool, message.to)] = message.sender  # the batch's next to this number too
            if index in sent_by_template:
                template_id, version, dlt_template_id = sent_by_template[index]
                update: dict[str, Any] = {"template_id": template_id, "template_version": version}
                if dlt_template_id and "dlt_entity_id" in message.carrier_ids:  # DLT: the template goes with the entity
                    update["carrier_ids"] = {**message.carrier_ids, "dlt_template_id": dlt_template_id}
                message = message.model_copy(update=update)
            if sandbox:  # a test key's message: the dispatcher sends it to the sandbox gateway only
                message = message.model_copy(update={"sandbox": True})
            results.append(Accepted(message, duplicate=replayed))
            key = request.idempotency_key or (default_keys[index] if default_keys else None)
            if key is not None:
                original = originals[index]
                assert isinstance(original, MessageRequest)
                digest = request_hash(original)
                if key in keyed and hashes[key] != digest:
                    results[index] = _conflict()
                    continue
                keyed.setdefault(key, []).append(index)
                hashes[key] = digest
        if any(isinstance(r, Accepted) and r.message.sender_choice for r in results):
            await self._store_assignments(tenant, requests, results, sticky, accept_one)
        if keyed:
            entries = []
            for key, indexes in keyed.items():
                first = results[indexes[0]]
                assert isinstance(first, Accepted)
                entries.append((key, hashes[key], first.message.message_id))
            records = await self.repository.reserve_keys(tenant, entries)
            for key, indexes in keyed.items():
                record = records[key]
                for position, index in enumerate(indexes):
                    current = results[index]
                    assert isinstance(current, Accepted)
                    if record.request_hash != hashes[key]:
                        results[index] = _conflict()
                    elif record.fresh and position == 0:
                        continue
                    else:
                        message = current.message.model_copy(update={"message_id": record.message_id})
                        results[index] = Accepted(message, duplicate=True)
        if self.links is not None:
            await self._track_links(tenant, requests, results, link_policy)
        self._apply_share(tenant, results)
        outgoing: list[Outgoing] = []
        published: set[uuid.UUID] = set()
        for result in results:
            if isinstance(result, Accepted) and result.message.message_id not in published:
                # Duplicates are published again (same event id): if the first publish was
                # lost, this one completes it; if not, every consumer drops it as seen.
                published.add(result.message.message_id)
                outgoing.append(accepted_event(tenant, result.message, trace_id))
        return results, outgoing

    async def _sticky(self, tenant: str, requests: list[MessageRequest | Rejection]) -> dict[tuple[str, str], str]:
        """The sticky senders of the batch's (pool, recipient) pairs (empty when no request names a pool)."""
        keys = {(r.sender_pool, number) for r in requests if isinstance(r, MessageRequest) and r.sender_pool is not None
                and (number := _e164(r.to)) is not None}
        return await self.repository.sender_assignments(tenant, sorted(keys)) if keys else {}

    async def _store_assignments(
        self, tenant: str, requests: list[MessageRequest | Rejection], results: list[Result],
        sticky: dict[tuple[str, str], str], accept_one: Callable[[int, MessageRequest], MessageAccepted],
    ) -> None:
        """Store the batch's new and fallen-back assignments. Where another instance assigned the
        same recipient a sender meanwhile, its choice stands: the message takes it too (chosen
        again with it as the sticky sender)."""
        first: dict[tuple[str, str], str] = {}
        fallbacks: dict[tuple[str, str], str] = {}
        for result in results:
            if isinstance(result, Accepted) and result.message.sender_choice and result.message.sender_pool:
                how = result.message.sender_choice.get("sender_choice")
                key = (result.message.sender_pool, result.message.to)
                if how == "fallback":
                    fallbacks[key] = result.message.sender or ""
                    first.pop(key, None)
                elif how == "assigned" and key not in fallbacks:
                    first[key] = result.message.sender or ""
        if not first and not fallbacks:
            return
        stored = await self.repository.assign_senders(tenant, first, fallbacks)
        lost = {key: sender for key, sender in stored.items() if first.get(key) != sender}
        if not lost:
            return
        sticky.update(lost)
        for index, result in enumerate(results):
            if not (isinstance(result, Accepted) and (result.message.sender_pool, result.message.to) in lost):
                continue
            request = requests[index]
            assert isinstance(request, MessageRequest)
            try:
                again = accept_one(index, request)
            except Rejection:
                continue  # the other's sender cannot send here: ours goes (and is stored next time)
            update = {name: getattr(again, name) for name in ("sender", "sender_choice", "sender_throttle", "carrier_ids")}
            results[index] = Accepted(result.message.model_copy(update=update), result.duplicate)

    async def _render_templates(
        self, tenant: str, requests: list[MessageRequest | Rejection]
    ) -> tuple[list[MessageRequest | Rejection], dict[int, tuple[uuid.UUID, int, str | None]]]:
        """Requests with a ``template_id`` rendered for their recipients (services/ingest/template_sends.py),
        or the reason they cannot be; and, per index rendered, the template id and version used and
        that version's DLT template id.
        The batch's templates are one query and its recipients' contacts another (none without templates)."""
        wanted = [i for i, r in enumerate(requests) if isinstance(r, MessageRequest) and r.template_id is not None]
        if not wanted:
            return requests, {}
        templated = [r for r in requests if isinstance(r, MessageRequest) and r.template_id is not None]
        keys = list(dict.fromkeys(template_key(r) for r in templated))
        numbers = {r.to: _e164(r.to) for r in templated}
        stored = await self.repository.templates_for_send(tenant, keys)
        phones = sorted({n for n in numbers.values() if n is not None})
        contacts = await self.repository.contacts_for_send(tenant, phones) if stored else {}
        out = list(requests)
        used: dict[int, tuple[uuid.UUID, int, str | None]] = {}
        for index in wanted:
            if index and index % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            request = requests[index]
            assert isinstance(request, MessageRequest)
            try:
                sent = render_send(request, stored.get(template_key(request)), contacts.get(numbers[request.to] or ""),
                                   allowed_types=self.allowed_types, smart_encoding=self.smart_encoding)
            except Rejection as rejection:
                out[index] = rejection
                continue
            out[index] = sent.request
            found = stored.get(template_key(request))
            used[index] = (sent.template_id, sent.version, found.dlt_template_id if found is not None else None)
        return out, used

    async def _marketing_context(
        self, tenant: str, requests: list[MessageRequest | Rejection]
    ) -> tuple[OptOut | None, tuple[str | None, int | None] | None]:
        """The tenant's opt-out mode and its contacts' languages, and its short-link policy (own
        domain, link lifetime), when the batch has raw marketing (one round trip; none for
        transactional traffic or templates, whose renderer adds the line)."""
        # Only what can be a number is looked up (anything else fails its parse with a reason; a
        # NUL byte in a query parameter would fail the whole batch).
        phones = sorted({to for r in requests if isinstance(r, MessageRequest) and r.type is MessageType.MARKETING
                         and r.template_id is None and _E164.fullmatch(to := r.to.strip())})
        if not phones:
            return None, None
        mode, languages, link_policy = await self.repository.marketing_context(tenant, phones)
        return OptOut(mode, languages), link_policy

    def _apply_share(self, tenant: str, results: list[Result]) -> None:
        """Transactional messages past the tenant's share of the priority lanes go on the
        campaign lanes (services/ingest/fair_share.py). Duplicates count too: they are published
        again (a replayed flood must not take the priority lanes either); whichever lane a
        duplicate takes, the dispatcher's claim sends the message once."""
        fresh = [i for i, r in enumerate(results) if isinstance(r, Accepted) and r.message.type is not MessageType.MARKETING]
        if not fresh:
            return
        admitted = self.share.admit(tenant, len(fresh), time.monotonic())
        over = fresh[admitted:]
        for index in over:
            result = results[index]
            assert isinstance(result, Accepted)
            results[index] = Accepted(result.message.model_copy(update={"bulk_lane": True}), result.duplicate)
        if over:
            metrics.PRIORITY_SHARE_EXCEEDED.inc(len(over))
            now = time.monotonic()
            if now - self._share_warned.get(tenant, -60.0) < 60:  # once a minute per tenant
                return
            if len(self._share_warned) > 10_000:
                self._share_warned.clear()
            self._share_warned[tenant] = now
            log.warning("tenant past its share of the transactional lanes: messages sent on the campaign lanes",
                        extra={"tenant": tenant, "messages": len(over)})

    async def _track_links(
        self, tenant: str, requests: list[MessageRequest | Rejection], results: list[Result],
        link_policy: tuple[str | None, int | None] | None,
    ) -> None:
        """Rewrite marketing messages' URLs to short links on the tenant's link domain (its own,
        else the shared one) and store the links in one round trip. ``link_policy``: the tenant's
        own domain and link lifetime, read with its marketing context (read here if it was not).
        Codes are drawn at random; a duplicate's message gets the codes stored for it the first
        time (``store_many`` returns them), so its body is the same."""
        assert self.links is not None
        wanted = [
            index for index, result in enumerate(results)
            if isinstance(result, Accepted) and result.message.type is MessageType.MARKETING
            and not (isinstance(requests[index], MessageRequest) and requests[index].track_links is False)  # type: ignore[union-attr]
            and has_urls(result.message.body)
        ]
        if not wanted:
            return
        own_domain, ttl_s = link_policy if link_policy is not None else await self.links.tenant_policy(tenant)
        domain = own_domain or self.link_domain
        ttl = timedelta(seconds=ttl_s or self.link_ttl_s)
        rows: list[LinkRecord] = []
        tracked: dict[uuid.UUID, MessageAccepted] = {}
        for index in wanted:
            result = results[index]
            assert isinstance(result, Accepted)
            message = tracked.get(result.message.message_id)
            if message is None:  # a duplicate in the same batch shares the first's links
                message, links = track_message(result.message, domain, smart=self.smart_encoding)
                tracked[message.message_id] = message
                rows += records(tenant, message, links, ttl=ttl, domain=own_domain)
            results[index] = Accepted(message, result.duplicate)
        replaced = await self.links.store_many(rows)
        if replaced:
            for index in wanted:
                result = results[index]
                assert isinstance(result, Accepted)
                results[index] = Accepted(swap_codes(result.message, domain, replaced), result.duplicate)


def _e164(raw: str) -> str | None:
    """The number in E.164 when it is one (looked up as a contact), else None (its send is refused later)."""
    try:
        return parse_e164(raw, allowed_types=None).e164
    except PhoneError:
        return None


def callback_refused(reason: str) -> Rejection:
    message = MESSAGES.get(reason, reason)
    return Rejection(reason, f"status_callback_url refused: {message}",
                     [{"loc": "body.status_callback_url", "code": reason, "msg": message}])


def _conflict() -> Rejection:
    return Rejection(
        "idempotency_conflict",
        "this idempotency key was already used with a different request",
        [{"loc": "idempotency_key", "code": "idempotency_conflict", "msg": "key reused with other content"}],
    )
