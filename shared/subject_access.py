"""Subject-access export: chunking a service's part and assembling the parts (docs/data-map.md).

Every service that holds numbers or texts answers ``herald.subject-access.v1`` with what its own
tables hold about the number, as rows by table. :func:`chunk_tables` splits those rows into
chunks whose JSON stays under a byte budget (Kafka refuses records over the broker's
``message.max.bytes``, about 1 MB by default); :func:`assemble` puts the chunks ingest received
back together, one complete gathering per service, into the export document.

Pure: no I/O here.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

# The services whose parts make an export complete (each owns tables with numbers or texts).
EXPORT_SERVICES = ("dispatcher", "ingest", "reports", "scheduler")
DOCUMENT_VERSION = 1

Rows = dict[str, list[dict[str, Any]]]


def jsonable(value: Any) -> Any:
    """A database value as JSON: times ISO 8601, uuids and decimals as strings, nested values kept."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    return value


def rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [jsonable(dict(r)) for r in records]


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def chunk_tables(tables: Rows, max_bytes: int) -> list[Rows]:
    """Split rows by table into chunks of at most ``max_bytes`` of JSON each (a row larger than
    that travels alone). Tables without rows are named in the first chunk, so the document says
    the service looked and found nothing. Always at least one chunk; order is kept."""
    if max_bytes < 1:
        raise ValueError("max_bytes must be positive")
    chunks: list[Rows] = []
    current: Rows = {name: [] for name in tables if not tables[name]}
    size, filled = _size(current), False
    for name, table_rows in tables.items():
        for row in table_rows:
            cost = _size(row) + 1 + (0 if name in current else _size(name) + 3)
            if filled and size + cost > max_bytes:
                chunks.append(current)
                current, size, filled = {}, 2, False
                cost = _size(row) + _size(name) + 4
            current.setdefault(name, []).append(row)
            size += cost
            filled = True
    chunks.append(current)
    return chunks


@dataclass(frozen=True)
class StoredPart:
    """One chunk as ingest stored it."""

    service: str
    attempt: uuid.UUID
    chunk: int
    chunks: int
    tables: Rows
    received_at: datetime


@dataclass(frozen=True)
class Assembly:
    pending: list[str]  # services with no complete part yet
    document: dict[str, Any] | None  # when every service's part is complete
    services: dict[str, Rows] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.pending


def complete_attempts(parts: Sequence[StoredPart]) -> dict[str, list[StoredPart]]:
    """Per service, the chunks of its first complete gathering (by when its last chunk arrived),
    in chunk order. A redelivered chunk is stored once; a service that gathered twice (a
    redelivered request) counts once."""
    by_attempt: dict[tuple[str, uuid.UUID], dict[int, StoredPart]] = {}
    for p in parts:
        by_attempt.setdefault((p.service, p.attempt), {}).setdefault(p.chunk, p)
    chosen: dict[str, tuple[datetime, list[StoredPart]]] = {}
    for (service, _), chunks in by_attempt.items():
        expected = {c.chunks for c in chunks.values()}
        if len(expected) != 1:
            continue  # chunks that disagree on their count: not one gathering
        (count,) = expected
        if sorted(chunks) != list(range(count)):
            continue
        done = max(c.received_at for c in chunks.values())
        if service not in chosen or done < chosen[service][0]:
            chosen[service] = (done, [chunks[i] for i in range(count)])
    return {service: ordered for service, (_, ordered) in chosen.items()}


def merge(chunks: Sequence[StoredPart]) -> Rows:
    tables: Rows = {}
    for c in chunks:
        for name, table_rows in c.tables.items():
            tables.setdefault(name, []).extend(table_rows)
    return dict(sorted(tables.items()))


def assemble(parts: Sequence[StoredPart], header: Mapping[str, Any],
             expected: Sequence[str] = EXPORT_SERVICES) -> Assembly:
    """The export's state: which services are pending, and once none is, the document:
    ``header`` (export id, tenant, number, who asked, when) and, per service, its rows by table."""
    done = complete_attempts(parts)
    services = {s: merge(done[s]) for s in sorted(done) if s in expected}
    pending = [s for s in expected if s not in services]
    if pending:
        return Assembly(sorted(pending), None, services)
    document = {"version": DOCUMENT_VERSION, **header, "services": services,
                "counts": {s: {t: len(r) for t, r in tables.items()} for s, tables in services.items()}}
    return Assembly([], document, services)
