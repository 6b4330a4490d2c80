"""Contact fields (checked the same way for the API and imports) and the streaming importer.

An import reads the request body chunk by chunk (CSV, NDJSON or a JSON array), checks each
row, and upserts rows by phone number in batches of :data:`BATCH_SIZE` with one statement per
batch, while the next batch is being parsed. Memory holds one chunk, one batch being built and
one being written, whatever the size of the upload. A bad row is reported (row, field, code)
and skipped; the import goes on. Each batch commits on its own: an upload cut halfway leaves
the rows before the cut imported, and sending the file again is harmless (upserts).

Rows: CSV ``row`` 1 is the first record after the header (a spreadsheet's row 2); NDJSON
``row`` is the line number; a JSON array's ``row`` is the element's position, from 1.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import json
import math
import re
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

import phonenumbers

from services.ingest.audience.segments import DATE_RE, _language
from shared.phones import PhoneError, parse_e164

# ---------------------------------------------------------------------------------------------
# Field checks

# Updatable fields, in the order of their bit in the presence mask the upsert uses.
FIELDS = ("first_name", "last_name", "attributes", "tags", "language", "country", "time_zone", "last_activity_at")
BIT = {name: 1 << i for i, name in enumerate(FIELDS)}

MAX_NAME = 100
MAX_ATTRIBUTES = 50
MAX_ATTRIBUTE_STRING = 1000
MAX_TAGS = 50
ATTRIBUTE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
TAG_RE = re.compile(r"^[^\s,;|\x00-\x1f\x7f](?:[^,;|\x00-\x1f\x7f]{0,62}[^\s,;|\x00-\x1f\x7f])?$")
TAG_SPLIT = re.compile(r"[,;|]")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
TAG_SEPARATOR = "\x1f"  # joins a row's tags into one text for unnest; TAG_RE forbids it in tags


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


@dataclass(slots=True)
class ContactInput:
    """A checked contact: its number and the fields given (``None`` clears a field)."""

    phone: str | None
    country_of_phone: str | None
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def mask(self) -> int:
        return sum(BIT[name] for name in self.values)


class RowError(Exception):
    def __init__(self, field_: str, code: str, msg: str) -> None:
        super().__init__(msg)
        self.field = field_
        self.code = code

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "msg": str(self)}


def check_contact(
    data: Mapping[str, Any], *, allowed_types: Iterable[str] | None, partial: bool = False
) -> tuple[ContactInput, list[RowError]]:
    """Check and normalise contact fields; collect every error rather than stopping at the first.

    ``partial`` (PATCH): the phone may be absent. Unknown keys are errors.
    """
    errors: list[RowError] = []
    out = ContactInput(None, None)
    for key in data:
        if key != "phone" and key not in BIT:
            errors.append(RowError(str(key), "unknown_field", f"unknown field {str(key)[:64]!r}"))
    raw_phone = data.get("phone")
    if raw_phone is None:
        if not partial or "phone" in data:
            errors.append(RowError("phone", "missing_phone", "phone is required"))
    elif not isinstance(raw_phone, str) or len(raw_phone) > 40:
        errors.append(RowError("phone", "not_e164", "phone must be a string in E.164 form"))
    else:
        try:
            phone = parse_e164(raw_phone, allowed_types)
            out.phone, out.country_of_phone = phone.e164, phone.country
        except PhoneError as exc:
            errors.append(RowError("phone", exc.code, str(exc)))
    for name in FIELDS:
        if name not in data:
            continue
        try:
            out.values[name] = _CHECKS[name](data[name])
        except RowError as exc:
            errors.append(exc)
    return out, errors


def _name(field_: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise RowError(field_, "invalid_type", f"{field_} must be a string")
        value = value.strip()
        if len(value) > MAX_NAME:
            raise RowError(field_, "too_long", f"{field_} has at most {MAX_NAME} characters")
        if CONTROL.search(value):
            raise RowError(field_, "invalid_characters", f"{field_} cannot hold control characters")
        return value or None

    return check


def check_attribute_value(key: str, value: Any) -> Any:
    loc = f"attributes.{key}"
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= 10**15:
            raise RowError(loc, "number_out_of_range", "numbers must be below 1e15 in size")
        return value
    if isinstance(value, (float, Decimal)):
        number = float(value)
        if not math.isfinite(number) or abs(number) >= 1e15:
            raise RowError(loc, "number_out_of_range", "numbers must be finite and below 1e15 in size")
        return number
    if isinstance(value, str):
        if len(value) > MAX_ATTRIBUTE_STRING:
            raise RowError(loc, "too_long", f"a string attribute has at most {MAX_ATTRIBUTE_STRING} characters")
        if "\x00" in value:
            raise RowError(loc, "invalid_characters", "attributes cannot hold NUL characters")
        if DATE_RE.match(value):
            return normalise_date(value, loc)
        return value
    if isinstance(value, (datetime, date)):
        return normalise_date(value.isoformat(), loc)
    raise RowError(loc, "invalid_type", "an attribute is a string, number, boolean or date (no lists or objects)")


def normalise_date(text: str, loc: str) -> str:
    """'YYYY-MM-DD' stays; a date-time becomes UTC 'YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00'."""
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise RowError(loc, "invalid_date", f"{text!r} looks like a date but is not a real one") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat()


def _attributes(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise RowError("attributes", "invalid_type", "attributes must be an object of key: value")
    if len(value) > MAX_ATTRIBUTES:
        raise RowError("attributes", "too_many_attributes", f"at most {MAX_ATTRIBUTES} attributes")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not ATTRIBUTE_KEY.match(key):
            raise RowError(f"attributes.{str(key)[:64]}", "invalid_key", "attribute keys are letters, digits and _, at most 64, not starting with a digit")
        out[key] = check_attribute_value(key, item)
    return out


def _tags(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):  # "vip, newsletter" (CSV)
        value = [t for t in TAG_SPLIT.split(value)]
    if not isinstance(value, list):
        raise RowError("tags", "invalid_type", "tags must be a list of strings")
    tags: dict[str, None] = {}
    for tag in value:
        if not isinstance(tag, str):
            raise RowError("tags", "invalid_type", "tags must be strings")
        tag = tag.strip()
        if not tag:
            continue
        if not TAG_RE.match(tag):
            raise RowError("tags", "invalid_tag", f"a tag has 1 to 64 characters, without , ; | or control characters: {tag[:64]!r}")
        tags[tag] = None
    if len(tags) > MAX_TAGS:
        raise RowError("tags", "too_many_tags", f"at most {MAX_TAGS} tags")
    return list(tags)


def _language_field(value: Any) -> str | None:
    if value is None or value == "":
        return None
    tag = _language(value) if isinstance(value, str) else None
    if tag is None:
        raise RowError("language", "invalid_language", "language is a BCP-47 tag like es or pt-BR")
    return tag


def _country(value: Any) -> str | None:
    if value is None or value == "":
        return None
    code = value.strip().upper() if isinstance(value, str) else None
    if code is None or code not in phonenumbers.SUPPORTED_REGIONS:
        raise RowError("country", "invalid_country", "country is an ISO 3166-1 alpha-2 code like ES")
    return code


def _time_zone(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value not in _zones():
        raise RowError("time_zone", "invalid_time_zone", "time_zone is an IANA name like Europe/Madrid")
    return value


def _timestamp(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str) and DATE_RE.match(value.strip()):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text) if len(text) > 10 else datetime.combine(date.fromisoformat(text), datetime.min.time())
        except ValueError:
            raise RowError("last_activity_at", "invalid_date", f"{text!r} is not a real date") from None
    else:
        raise RowError("last_activity_at", "invalid_date", "last_activity_at is an ISO 8601 date or date-time")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "first_name": _name("first_name"),
    "last_name": _name("last_name"),
    "attributes": _attributes,
    "tags": _tags,
    "language": _language_field,
    "country": _country,
    "time_zone": _time_zone,
    "last_activity_at": _timestamp,
}


# ---------------------------------------------------------------------------------------------
# Streaming parsers: each yields (row number, dict of fields) or (row number, RowError).

BATCH_SIZE = 1000
MAX_ROWS = 1_000_000
MAX_RECORD_CHARS = 64 * 1024
MAX_ERRORS = 1000

Record = tuple[int, dict[str, Any] | RowError]


class ImportAborted(Exception):
    """The body cannot be read on (bad header, broken JSON, too large): the import stops."""

    def __init__(self, code: str, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.row = row

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self), "row": self.row}


async def decode(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """UTF-8 text (a BOM is dropped) from byte chunks, never splitting a character."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        async for chunk in chunks:
            if chunk:
                text = decoder.decode(chunk)
                if text:
                    yield text
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ImportAborted("invalid_encoding", "the body is not valid UTF-8") from None
    if tail:
        yield tail


async def lines(texts: AsyncIterator[str]) -> AsyncIterator[list[str]]:
    """Complete lines (with their line ends), a list per chunk."""
    pending = ""
    async for text in texts:
        pending += text
        cut = pending.rfind("\n") + 1
        if cut:
            yield pending[:cut].splitlines(keepends=True)
            pending = pending[cut:]
        if len(pending) > MAX_RECORD_CHARS:
            raise ImportAborted("row_too_large", f"a line is longer than {MAX_RECORD_CHARS} characters")
    if pending:
        yield [pending]


CSV_TYPES = ("string", "number", "bool", "date")
CSV_COLUMNS = ("phone",) + FIELDS[:2] + FIELDS[3:]  # every field but attributes, which are columns of their own


@dataclass(frozen=True, slots=True)
class Column:
    name: str  # a contact field, or the attribute key
    attribute: bool = False
    type: str = "string"


def parse_header(cells: list[str]) -> list[Column]:
    columns: list[Column] = []
    seen: set[str] = set()
    for cell in cells:
        name = cell.strip()
        lowered = name.lower()
        if lowered.startswith(("attributes.", "attribute.", "attr.")):
            spec = name.split(".", 1)[1]
            key, _, type_ = spec.partition(":")
            type_ = type_.strip().lower() or "string"
            if not ATTRIBUTE_KEY.match(key) or type_ not in CSV_TYPES:
                raise ImportAborted(
                    "invalid_header", f"column {name!r}: write attributes.<key> or attributes.<key>:<{'|'.join(CSV_TYPES)}>", 0
                )
            column = Column(key, attribute=True, type=type_)
            ident = "attributes." + key
        elif lowered in CSV_COLUMNS:
            column, ident = Column(lowered), lowered
        else:
            raise ImportAborted(
                "unknown_column",
                f"unknown column {name[:64]!r}: columns are {', '.join(CSV_COLUMNS)} and attributes.<key>[:type]",
                0,
            )
        if ident in seen:
            raise ImportAborted("duplicate_column", f"column {name!r} appears twice", 0)
        seen.add(ident)
        columns.append(column)
    if "phone" not in seen:
        raise ImportAborted("missing_phone_column", "the header needs a phone column", 0)
    return columns


_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}


def csv_attribute(column: Column, cell: str) -> Any:
    loc = f"attributes.{column.name}"
    if column.type == "string":
        return cell
    text = cell.strip()
    if column.type == "number":
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise RowError(loc, "invalid_number", f"{text[:32]!r} is not a number") from None
        if not number.is_finite():
            raise RowError(loc, "invalid_number", "numbers must be finite")
        return int(number) if re.fullmatch(r"[+-]?\d+", text) else float(number)
    if column.type == "bool":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise RowError(loc, "invalid_bool", "booleans are true/false, yes/no or 1/0")
    if not DATE_RE.match(text):
        raise RowError(loc, "invalid_date", "dates are ISO 8601: 2025-01-31 or 2025-01-31T18:00:00Z")
    return text


def _sniff_delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


async def csv_records(texts: AsyncIterator[str]) -> AsyncIterator[list[Record]]:
    """CSV rows; the header names the columns. Quoted fields may hold newlines.

    A record ends at a line end outside quotes: with RFC 4180 quoting (a quote in a field is
    doubled), that is where the count of quote characters so far is even.
    """
    columns: list[Column] | None = None
    delimiter = ","
    record, quotes, row = "", 0, 0
    async for chunk in lines(texts):
        complete: list[str] = []
        for line in chunk:
            record += line
            quotes += line.count('"')
            if quotes % 2 == 0:
                complete.append(record)
                record, quotes = "", 0
            elif len(record) > MAX_RECORD_CHARS:
                raise ImportAborted("row_too_large", f"a record is longer than {MAX_RECORD_CHARS} characters (an unclosed quote?)", row + 1)
        if not complete:
            continue
        if columns is None:
            header = complete.pop(0)
            delimiter = _sniff_delimiter(header)
            columns = parse_header(next(csv.reader([header], delimiter=delimiter)))
        out: list[Record] = []
        for cells in csv.reader(complete, delimiter=delimiter):
            if not cells or all(not c.strip() for c in cells):
                continue  # blank line
            row += 1
            out.append((row, _csv_row(columns, cells)))
        yield out
    if record:
        raise ImportAborted("unclosed_quote", "the file ends inside a quoted field", row + 1)
    if columns is None:
        raise ImportAborted("empty_import", "the body holds no header line")


class CsvRow(dict[str, Any]):
    """A CSV row's fields, with the errors found while typing its attribute cells."""

    errors: list[RowError]


def _csv_row(columns: list[Column], cells: list[str]) -> dict[str, Any] | RowError:
    if len(cells) != len(columns):
        return RowError("", "wrong_column_count", f"{len(cells)} cells for {len(columns)} columns")
    data = CsvRow()
    data.errors = []
    attributes: dict[str, Any] = {}
    for column, cell in zip(columns, cells, strict=True):
        if cell == "" or (column.type != "string" and not cell.strip()):
            continue  # an empty cell leaves the field as it is
        if column.attribute:
            try:
                attributes[column.name] = csv_attribute(column, cell)
            except RowError as exc:
                data.errors.append(exc)
        else:
            data[column.name] = cell.strip()
    if attributes:
        data["attributes"] = attributes
    return data


async def ndjson_records(texts: AsyncIterator[str]) -> AsyncIterator[list[Record]]:
    number = 0
    async for chunk in lines(texts):
        out: list[Record] = []
        for line in chunk:
            number += 1
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                out.append((number, RowError("", "malformed_json", f"line is not JSON: {exc.msg}")))
                continue
            out.append((number, item if isinstance(item, dict) else RowError("", "not_an_object", "each line is a JSON object")))
        yield out


_WS = re.compile(r"[ \t\r\n]*")


async def json_array_records(texts: AsyncIterator[str]) -> AsyncIterator[list[Record]]:
    """Elements of one top-level JSON array, decoded as they arrive.

    An element is taken once the character after it (``,`` or ``]``) has arrived, so a number
    cut by a chunk boundary is never read short. A syntax error stops the import: a broken
    array cannot be resynchronised.
    """
    decoder = json.JSONDecoder()
    source = texts.__aiter__()
    buf, pos, eof = "", 0, False
    state = "start"  # start → first → value → separator → value … → end
    index = 0

    async def more() -> None:
        nonlocal buf, pos, eof
        try:
            text = await source.__anext__()
        except StopAsyncIteration:
            eof = True
            return
        buf, pos = buf[pos:] + text, 0

    while True:
        out: list[Record] = []
        while True:
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= len(buf):
                break
            c = buf[pos]
            if state == "start":
                if c != "[":
                    raise ImportAborted("malformed_json", "a JSON import is an array of objects (or NDJSON)", 1)
                pos, state = pos + 1, "first"
            elif state in ("first", "value"):
                if state == "first" and c == "]":
                    pos, state = pos + 1, "end"
                    continue
                try:
                    item, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError:
                    if eof or len(buf) - pos > MAX_RECORD_CHARS:
                        raise ImportAborted("malformed_json", f"element {index + 1} is not valid JSON", index + 1) from None
                    break  # wait for more text
                after = _WS.match(buf, end).end()  # type: ignore[union-attr]
                if after >= len(buf) and not eof:
                    break  # cannot tell yet that the element is complete
                index += 1
                out.append((index, item if isinstance(item, dict) else RowError("", "not_an_object", "each element is a JSON object")))
                pos, state = end, "separator"
            elif state == "separator":
                if c == ",":
                    pos, state = pos + 1, "value"
                elif c == "]":
                    pos, state = pos + 1, "end"
                else:
                    raise ImportAborted("malformed_json", f"expected , or ] after element {index}", index)
            else:
                raise ImportAborted("malformed_json", "text after the end of the array", index)
        if out:
            yield out
        if eof:
            break
        await more()
    if state != "end":
        raise ImportAborted("malformed_json", "the JSON array is not closed", index + 1 if index else None)


FORMATS = {"csv": csv_records, "ndjson": ndjson_records, "json": json_array_records}


async def sniff_json(texts: AsyncIterator[str]) -> tuple[str, AsyncIterator[str]]:
    """``json`` when the first non-blank character is ``[``, else ``ndjson``; the text is replayed."""
    source = texts.__aiter__()
    seen: list[str] = []
    kind = "ndjson"
    async for text in source:
        seen.append(text)
        stripped = text.lstrip()
        if stripped:
            kind = "json" if stripped[0] == "[" else "ndjson"
            break

    async def replay() -> AsyncIterator[str]:
        for text in seen:
            yield text
        async for text in source:
            yield text

    return kind, replay()


# ---------------------------------------------------------------------------------------------
# The import itself


@dataclass
class ImportResult:
    format: str
    rows: int = 0
    created: int = 0
    updated: int = 0
    rejected: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    errors_truncated: bool = False
    aborted: ImportAborted | None = None
    batches: int = 0
    chunks: int = 0  # body chunks read
    bytes: int = 0

    def reject(self, row: int, errors: list[RowError]) -> None:
        """One rejected row, with every error found in it."""
        self.rejected += 1
        for error in errors:
            if len(self.errors) < MAX_ERRORS:
                self.errors.append({"row": row, **error.as_dict()})
            else:
                self.errors_truncated = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "aborted" if self.aborted else "completed",
            "format": self.format,
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "rejected": self.rejected,
            "errors": self.errors,
            "errors_truncated": self.errors_truncated,
            "abort": self.aborted.as_dict() if self.aborted else None,
        }


Upsert = Callable[[list[ContactInput]], Awaitable[tuple[int, int]]]


async def run_import(
    chunks: AsyncIterator[bytes],
    fmt: str,
    upsert: Upsert,
    *,
    allowed_types: Iterable[str] | None,
    batch_size: int = BATCH_SIZE,
    max_rows: int = MAX_ROWS,
) -> ImportResult:
    """Read, check and upsert. ``fmt`` is csv, ndjson, json, or ``auto-json`` (array or NDJSON).

    ``upsert(rows)`` writes one batch and answers (created, updated). At most one batch is in
    flight while the next is parsed; a phone seen twice in a batch flushes it first, so a later
    row updates the earlier one, as in a sequential import.
    """
    allowed = frozenset(allowed_types) if allowed_types is not None else None
    result = ImportResult(format=fmt)

    async def counted() -> AsyncIterator[bytes]:
        async for chunk in chunks:
            result.chunks += 1
            result.bytes += len(chunk)
            yield chunk

    texts = decode(counted())
    if fmt == "auto-json":
        fmt, texts = await sniff_json(texts)
        result.format = fmt
    records = FORMATS[fmt](texts)

    batch: list[ContactInput] = []
    phones: set[str] = set()
    in_flight: asyncio.Task[tuple[int, int]] | None = None

    async def settle() -> None:
        nonlocal in_flight
        if in_flight is not None:
            task, in_flight = in_flight, None
            created, updated = await task
            result.created += created
            result.updated += updated

    async def flush() -> None:
        nonlocal batch, phones, in_flight
        if not batch:
            return
        await settle()
        result.batches += 1
        in_flight = asyncio.create_task(upsert(batch))
        batch, phones = [], set()

    try:
        async for group in records:
            for row, item in group:
                result.rows += 1
                if result.rows > max_rows:
                    raise ImportAborted("import_too_large", f"an import holds at most {max_rows} rows", row)
                if isinstance(item, RowError):
                    result.reject(row, [item])
                    continue
                contact, errors = check_contact(item, allowed_types=allowed)
                errors = getattr(item, "errors", []) + errors
                if errors:
                    result.reject(row, errors)
                    continue
                assert contact.phone is not None
                if contact.phone in phones:
                    await flush()
                batch.append(contact)
                phones.add(contact.phone)
                if len(batch) >= batch_size:
                    await flush()
        await flush()
        await settle()
    except ImportAborted as exc:  # the rows read before the problem are still imported
        result.aborted = exc
        if exc.code == "import_too_large":
            result.rows -= 1
        await flush()
        await settle()
    except BaseException:
        if in_flight is not None:
            in_flight.cancel()
        raise
    return result
