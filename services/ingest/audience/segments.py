"""The segment filter language: text → lark parse tree → validated AST → parameterised SQL.

Example::

    country = "ES" and "vip" in tags and last_purchase_at < now() - interval '30 days'

Grammar (keywords are case-insensitive)::

    filter     := "all" | or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | "(" or ")" | predicate
    predicate  := field op value                 op: = == != <> < <= > >=
                | field ["not"] "in" "[" literal, ... "]"
                | literal ["not"] "in" tags
                | "exists" field
                | field                          a boolean field alone: suppressed
    value      := literal | now() [("+" | "-") interval '<n> <unit>']
                                              intervals up to 200 years; dates 1800 to 2199
    literal    := "string" | 'string' | number | true | false

Fields:

- contact columns: ``phone``, ``first_name``, ``last_name``, ``country``, ``language``,
  ``time_zone`` (text), ``last_activity_at``, ``created_at``, ``updated_at`` (timestamps),
  ``tags`` (only ``"x" in tags``, ``"x" not in tags``, ``exists tags``);
- consent: ``consent.marketing``, ``consent.transactional`` (true only when the newest
  record grants it; never asked counts as false), ``suppressed`` (on the suppression list,
  in clear or as an erased number's hash);
- attributes: ``attributes.<key>``, or the bare ``<key>`` when it is not a column name
  above. ``=`` / ``!=`` / ``in`` compare JSON values exactly (string, number, bool);
  ``< <= > >=`` compare numbers with a number, dates with a date string or ``now()``, and
  strings with a string; an attribute that is absent (or of another type) matches nothing,
  except with ``!=`` and ``not in``, which match it.

Nothing from the text reaches the SQL but allow-listed column names and operators: every
value (attribute keys included) is a ``$n`` parameter. The text is limited in length,
nesting, conditions and list sizes, so a filter cannot cost the database much to plan.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Union, cast

from lark import Lark, Token, Tree, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from shared.erasure import NO_KEYS, ErasureKeys, sql_hash_forms

MAX_LENGTH = 4000
MAX_DEPTH = 16  # nested and/or/not groups
MAX_CONDITIONS = 100
MAX_LIST = 500
MAX_ATTRIBUTE_LIST = 100  # "in" on an attribute is one containment test per item (GIN index)
MAX_STRING = 500
MAX_ABS_NUMBER = Decimal("1e15")
# Times a filter may name: far enough for any real audience, near enough that PostgreSQL can
# always compute them (now() - interval '9999 years' is out of a timestamp's range and would
# fail every query the filter is used in).
MAX_INTERVAL_YEARS = 200
MIN_DATE = datetime(1800, 1, 1, tzinfo=UTC)
MAX_DATE = datetime(2200, 1, 1, tzinfo=UTC)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400,
                 "month": 30 * 86400, "year": 365 * 86400}

ATTRIBUTE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
INTERVAL = re.compile(
    r"^\s*(?:\d{1,5}\s*(?:seconds?|minutes?|hours?|days?|weeks?|months?|years?)\s*)+$", re.IGNORECASE
)
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?(?:Z|[+-]\d{2}:?\d{2})?)?$")
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(?:-(?:[A-Z]{2}|[0-9]{3}|[A-Z][a-z]{3}))?$")

# Column fields: name → (SQL column, type). The SQL names come only from this table.
COLUMNS: dict[str, tuple[str, str]] = {
    "phone": ("phone_e164", "text"),
    "first_name": ("first_name", "text"),
    "last_name": ("last_name", "text"),
    "country": ("country", "country"),
    "language": ("language", "language"),
    "time_zone": ("time_zone", "text"),
    "last_activity_at": ("last_activity_at", "timestamp"),
    "created_at": ("created_at", "timestamp"),
    "updated_at": ("updated_at", "timestamp"),
    "tags": ("tags", "tags"),
    "suppressed": ("", "suppressed"),
}
CONSENT = {"marketing": "consent_marketing", "transactional": "consent_transactional"}
RESERVED = frozenset(COLUMNS) | {"attributes", "consent", "all", "and", "or", "not", "in", "exists", "true", "false", "now", "interval"}

GRAMMAR = r"""
start: ALL -> everything
     | or_expr

?or_expr: and_expr (_OR and_expr)*
?and_expr: not_expr (_AND not_expr)*
?not_expr: _NOT not_expr -> not_
         | "(" or_expr ")"
         | predicate

predicate: field OP value             -> compare
         | field _IN list             -> in_list
         | field _NOT _IN list        -> not_in_list
         | literal _IN field          -> member
         | literal _NOT _IN field     -> not_member
         | _EXISTS field              -> exists
         | field                      -> truthy

field: NAME ("." NAME)*
?value: literal
      | NOW "(" ")"                          -> now
      | NOW "(" ")" ADDOP _INTERVAL STRING   -> now_shifted
list: "[" [literal ("," literal)*] "]"
literal: STRING | NUMBER | TRUE | FALSE

OP: "==" | "=" | "!=" | "<>" | "<=" | ">=" | "<" | ">"
ADDOP: "+" | "-"
STRING: /"(?:[^"\\\n]|\\.)*"/ | /'(?:[^'\\\n]|\\.)*'/
NUMBER: /-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
ALL: "all"i
TRUE: "true"i
FALSE: "false"i
NOW: "now"i
_INTERVAL: "interval"i
_AND: "and"i
_OR: "or"i
_NOT: "not"i
_IN: "in"i
_EXISTS: "exists"i

%import common.WS
%ignore WS
"""

_PARSER = Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=False)


class SegmentError(ValueError):
    """A filter that cannot be used, with a machine-readable code and where it went wrong."""

    def __init__(self, code: str, message: str, position: int | None = None, text: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.position = position
        self.line: int | None
        self.column: int | None
        if position is not None and text:
            before = text[:position]
            self.line = before.count("\n") + 1
            self.column = position - (before.rfind("\n") + 1) + 1
        else:
            self.line = self.column = None

    def detail(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loc": "filter", "code": self.code, "msg": str(self)}
        if self.position is not None:
            out |= {"position": self.position, "line": self.line, "column": self.column}
        return out


# ---------------------------------------------------------------------------------------------
# The AST


@dataclass(frozen=True, slots=True)
class Field:
    kind: str  # column | tags | consent | suppressed | attribute
    name: str  # the canonical name: country, consent.marketing, attributes.plan
    type: str  # text | country | language | timestamp | tags | bool | any
    sql: str = ""  # the column, for kind column / consent
    key: str = ""  # the attribute key, for kind attribute


@dataclass(frozen=True, slots=True)
class Value:
    """A literal, or ``now()`` shifted by an interval. ``raw`` is the canonical spelling."""

    kind: str  # string | number | bool | now
    value: Any
    raw: str
    shift: tuple[str, str] | None = None  # ("-", "30 days") for now() - interval '30 days'


@dataclass(frozen=True, slots=True)
class Compare:
    field: Field
    op: str  # = != < <= > >=
    value: Value


@dataclass(frozen=True, slots=True)
class InList:
    field: Field
    values: tuple[Value, ...]
    negated: bool


@dataclass(frozen=True, slots=True)
class Member:
    value: Value  # a string, member of tags
    negated: bool


@dataclass(frozen=True, slots=True)
class Exists:
    field: Field


@dataclass(frozen=True, slots=True)
class Not:
    item: Node


@dataclass(frozen=True, slots=True)
class BoolOp:
    op: str  # and | or
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Everything:
    pass


Node = Union[Compare, InList, Member, Exists, Not, BoolOp, Everything]


# ---------------------------------------------------------------------------------------------
# Parsing and validation


def parse(text: str) -> Node:
    """Parse and validate ``text``; raise :class:`SegmentError` (code, position) if it is not usable."""
    if not isinstance(text, str) or not text.strip():
        raise SegmentError("empty_filter", "the filter is empty; write `all` to select every contact")
    if len(text) > MAX_LENGTH:
        raise SegmentError("filter_too_long", f"the filter has {len(text)} characters, at most {MAX_LENGTH}", MAX_LENGTH, text)
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text) from None
    _check_shape(tree, text)
    return _Builder(text).build(tree)


def _syntax_error(exc: UnexpectedInput, text: str) -> SegmentError:
    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        return SegmentError("unexpected_end", "the filter ends too early (a value or a closing bracket is missing)", len(text), text)
    pos = exc.pos_in_stream if exc.pos_in_stream is not None else len(text)
    if isinstance(exc, UnexpectedCharacters):
        return SegmentError("unexpected_character", f"unexpected character {text[pos]!r}", pos, text)
    if isinstance(exc, UnexpectedToken):
        expected = sorted(_describe(t) for t in exc.accepts or exc.expected)
        hint = f"; expected {', '.join(dict.fromkeys(expected))}" if expected else ""
        return SegmentError("unexpected_token", f"unexpected {exc.token.value!r}{hint}", pos, text)
    return SegmentError("syntax_error", str(exc).splitlines()[0], pos, text)


_TERMINAL_NAMES = {
    "OP": "an operator (= != < <= > >=)", "NAME": "a field", "STRING": "a string", "NUMBER": "a number",
    "LPAR": "'('", "RPAR": "')'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "DOT": "'.'",
    "_AND": "and", "_OR": "or", "_NOT": "not", "_IN": "in", "_EXISTS": "exists", "TRUE": "true", "FALSE": "false",
    "NOW": "now()", "ADDOP": "+ or -", "_INTERVAL": "interval", "ALL": "all", "$END": "the end",
}


def _describe(terminal: str) -> str:
    return _TERMINAL_NAMES.get(terminal, terminal.lower())


def _check_shape(tree: Tree, text: str) -> None:
    """Depth and condition caps, walked without recursion (the transformer recurses)."""
    conditions = 0
    stack: list[tuple[Tree, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if node.data in ("or_expr", "and_expr", "not_"):
            depth += 1
            if depth > MAX_DEPTH:
                raise SegmentError("filter_too_deep", f"the filter nests more than {MAX_DEPTH} levels", _pos(node), text)
        elif node.data in ("compare", "in_list", "not_in_list", "member", "not_member", "exists", "truthy"):
            conditions += 1
            if conditions > MAX_CONDITIONS:
                raise SegmentError("too_many_conditions", f"the filter has more than {MAX_CONDITIONS} conditions", _pos(node), text)
        elif node.data == "list" and len(node.children) > MAX_LIST:
            raise SegmentError("list_too_long", f"a list holds at most {MAX_LIST} values", _pos(node), text)
        stack.extend((c, depth) for c in node.children if isinstance(c, Tree))


def _pos(node: Tree | Token) -> int | None:
    if isinstance(node, Token):
        return node.start_pos
    return getattr(node.meta, "start_pos", None) if not node.meta.empty else None


class _Builder:
    """Turns the parse tree into the AST, checking fields, types, operators and values."""

    def __init__(self, text: str) -> None:
        self.text = text

    def fail(self, code: str, message: str, at: Tree | Token | None) -> SegmentError:
        return SegmentError(code, message, _pos(at) if at is not None else None, self.text)

    def build(self, tree: Tree) -> Node:
        if tree.data == "everything":
            return Everything()
        (root,) = tree.children
        return self.node(root)

    def node(self, t: Tree) -> Node:
        kind = t.data
        if kind in ("or_expr", "and_expr"):
            return BoolOp("or" if kind == "or_expr" else "and", tuple(self.node(c) for c in t.children))
        if kind == "not_":
            return Not(self.node(t.children[0]))
        return getattr(self, "p_" + kind)(t)

    # fields ---------------------------------------------------------------------------------

    def field(self, t: Tree) -> Field:
        parts = [str(tok) for tok in t.children]
        first = parts[0]
        if len(parts) == 1:
            if first in COLUMNS:
                column, type_ = COLUMNS[first]
                kind = {"tags": "tags", "suppressed": "suppressed"}.get(type_, "column")
                return Field(kind, first, "bool" if kind == "suppressed" else type_, sql=column)
            if first.lower() in RESERVED:
                raise self.fail("unknown_field", f"{first!r} is a keyword, not a field", t)
            return self.attribute(first, t)
        if first == "attributes":
            if len(parts) != 2:
                raise self.fail("unknown_field", "attributes are flat: write attributes.<key>", t)
            return self.attribute(parts[1], t)
        if first == "consent":
            if len(parts) != 2 or parts[1] not in CONSENT:
                raise self.fail("unknown_field", "consent has two purposes: consent.marketing, consent.transactional", t)
            return Field("consent", f"consent.{parts[1]}", "bool", sql=CONSENT[parts[1]])
        raise self.fail("unknown_field", f"unknown field {'.'.join(parts)!r} (attributes are attributes.<key>)", t)

    def attribute(self, key: str, at: Tree) -> Field:
        if not ATTRIBUTE_KEY.match(key):
            raise self.fail("unknown_field", f"attribute keys are letters, digits and _, at most 64: {key!r}", at)
        return Field("attribute", f"attributes.{key}", "any", key=key)

    # values ---------------------------------------------------------------------------------

    def literal(self, t: Tree) -> Value:
        (child,) = t.children
        tok = cast(Token, child)  # the grammar's literals are single tokens
        if tok.type == "STRING":
            return Value("string", self.string(tok), json.dumps(self.string(tok), ensure_ascii=False))
        if tok.type == "NUMBER":
            try:
                number = Decimal(str(tok))
            except InvalidOperation:
                raise self.fail("invalid_value", f"{tok!s} is not a number", tok) from None
            if not number.is_finite() or abs(number) >= MAX_ABS_NUMBER:
                raise self.fail("invalid_value", f"numbers must be below {MAX_ABS_NUMBER:.0e} in size", tok)
            return Value("number", number, str(tok))
        truth = tok.type == "TRUE"
        return Value("bool", truth, "true" if truth else "false")

    def string(self, tok: Token) -> str:
        raw = str(tok)
        try:
            if raw[0] == '"':
                value = json.loads(raw)
            else:
                value = re.sub(r"\\(.)", r"\1", raw[1:-1])
        except ValueError:
            raise self.fail("invalid_value", "invalid escape in string", tok) from None
        if len(value) > MAX_STRING:
            raise self.fail("invalid_value", f"strings are at most {MAX_STRING} characters", tok)
        if "\x00" in value:
            raise self.fail("invalid_value", "strings cannot hold NUL characters", tok)
        return value

    def value(self, t: Tree) -> Value:
        if t.data == "literal":
            return self.literal(t)
        if t.data == "now":
            return Value("now", None, "now()")
        _, sign, interval_child = t.children
        interval_tok = cast(Token, interval_child)
        interval = self.string(interval_tok)
        if not INTERVAL.match(interval):
            raise self.fail("invalid_interval", "an interval is like '30 days', '2 hours' or '1 month 15 days'", interval_tok)
        interval = " ".join(interval.split()).lower()
        if interval_seconds(interval) > MAX_INTERVAL_YEARS * _UNIT_SECONDS["year"]:
            raise self.fail("interval_out_of_range", f"an interval is at most {MAX_INTERVAL_YEARS} years", interval_tok)
        return Value("now", None, f"now() {sign} interval '{interval}'", shift=(str(sign), interval))

    def timestamp(self, v: Value, at: Tree) -> Value:
        """A date string as a timestamp value (UTC when it has no offset)."""
        if v.kind == "now":
            return v
        if v.kind != "string" or not DATE_RE.match(v.value):
            raise self.fail("type_mismatch", "compare a date with now() [± interval '…'] or a date string \"2025-01-31\"", at)
        try:
            parsed = datetime.fromisoformat(v.value) if len(v.value) > 10 else datetime.combine(date.fromisoformat(v.value), datetime.min.time())
        except ValueError:
            raise self.fail("invalid_value", f"{v.value!r} is not a real date", at) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        if not MIN_DATE <= parsed < MAX_DATE:
            raise self.fail("date_out_of_range", f"a date is from {MIN_DATE.year} to {MAX_DATE.year - 1}", at)
        return Value("timestamp", parsed, v.raw)

    def column_value(self, f: Field, v: Value, at: Tree) -> Value:
        """Check a value against a column field's type; normalise country and language."""
        if f.type == "timestamp":
            return self.timestamp(v, at)
        if f.type == "bool":
            if v.kind != "bool":
                raise self.fail("type_mismatch", f"{f.name} is true or false", at)
            return v
        if v.kind != "string":
            raise self.fail("type_mismatch", f"{f.name} is compared with a string", at)
        if f.type == "country":
            code = v.value.upper()
            if not COUNTRY_RE.match(code):
                raise self.fail("invalid_value", f"a country is an ISO 3166 code like \"ES\", not {v.value!r}", at)
            return Value("string", code, json.dumps(code))
        if f.type == "language":
            tag = _language(v.value)
            if tag is None:
                raise self.fail("invalid_value", f"a language is a BCP-47 tag like \"es\" or \"pt-BR\", not {v.value!r}", at)
            return Value("string", tag, json.dumps(tag))
        return v

    # predicates -----------------------------------------------------------------------------

    def p_compare(self, t: Tree) -> Compare:
        field_tree, op_tok, value_tree = t.children
        f = self.field(field_tree)
        op = {"==": "=", "<>": "!="}.get(str(op_tok), str(op_tok))
        v = self.value(value_tree)
        if f.kind == "tags":
            raise self.fail("operator_not_allowed", 'tags take `"x" in tags`, `"x" not in tags` or `exists tags`', op_tok)
        if f.kind == "attribute":
            if v.kind == "now":
                v = self.timestamp(v, value_tree)
            elif op in ("<", "<=", ">", ">="):
                if v.kind == "bool":
                    raise self.fail("operator_not_allowed", "true and false are compared with = or !=", op_tok)
                if v.kind == "string" and DATE_RE.match(v.value):
                    v = self.timestamp(v, value_tree)
            return Compare(f, op, v)
        v = self.column_value(f, v, value_tree)
        if f.type == "bool" and op not in ("=", "!="):
            raise self.fail("operator_not_allowed", f"{f.name} is compared with = or !=", op_tok)
        return Compare(f, op, v)

    def list_values(self, f: Field, t: Tree) -> tuple[Value, ...]:
        values = tuple(self.literal(c) for c in t.children)
        if not values:
            raise self.fail("invalid_value", "the list is empty", t)
        if f.kind == "attribute":
            if len(values) > MAX_ATTRIBUTE_LIST:
                raise self.fail("list_too_long", f"a list on an attribute holds at most {MAX_ATTRIBUTE_LIST} values", t)
            return values
        if f.kind != "column" or f.type == "timestamp":
            raise self.fail("operator_not_allowed", f"`in [...]` does not apply to {f.name}", t)
        return tuple(self.column_value(f, v, c) for v, c in zip(values, t.children, strict=True))

    def p_in_list(self, t: Tree, negated: bool = False) -> InList:
        field_tree, list_tree = t.children
        f = self.field(field_tree)
        if f.kind == "tags":
            raise self.fail("operator_not_allowed", 'for tags write `"vip" in tags` (one tag per condition)', field_tree)
        return InList(f, self.list_values(f, list_tree), negated)

    def p_not_in_list(self, t: Tree) -> InList:
        return self.p_in_list(t, negated=True)

    def p_member(self, t: Tree, negated: bool = False) -> Member:
        literal_tree, field_tree = t.children
        f = self.field(field_tree)
        if f.kind != "tags":
            raise self.fail("operator_not_allowed", f'`"x" in <field>` applies to tags only; for {f.name} write {f.name} in [...]', field_tree)
        v = self.literal(literal_tree)
        if v.kind != "string":
            raise self.fail("type_mismatch", "tags are strings", literal_tree)
        return Member(v, negated)

    def p_not_member(self, t: Tree) -> Member:
        return self.p_member(t, negated=True)

    def p_exists(self, t: Tree) -> Exists:
        f = self.field(t.children[0])
        if f.kind == "suppressed":
            raise self.fail("operator_not_allowed", "write `suppressed` or `not suppressed`", t)
        return Exists(f)

    def p_truthy(self, t: Tree) -> Compare:
        f = self.field(t.children[0])
        if f.type != "bool":
            raise self.fail("incomplete_condition", f"{f.name} needs a comparison (for example {f.name} = \"…\")", t)
        return Compare(f, "=", Value("bool", True, "true"))


def interval_seconds(interval: str) -> int:
    """The length of a checked interval text ('1 month 15 days'), months as 30 days, years as 365."""
    total = 0
    for number, unit in re.findall(r"(\d+)\s*([a-z]+)", interval.lower()):
        total += int(number) * _UNIT_SECONDS[unit.rstrip("s")]
    return total


def _language(raw: str) -> str | None:
    parts = raw.replace("_", "-").split("-")
    if len(parts) > 2:
        return None
    tag = parts[0].lower()
    if len(parts) == 2:
        sub = parts[1]
        tag += "-" + (sub.upper() if len(sub) in (2, 3) else sub.title())
    return tag if LANGUAGE_RE.match(tag) else None


# ---------------------------------------------------------------------------------------------
# SQL


@dataclass
class CompiledFilter:
    """A boolean SQL expression over ``contacts <alias>`` and its ``$n`` parameters, in order."""

    sql: str
    params: list[Any] = field(default_factory=list)


class _Compiler:
    def __init__(self, first_param: int, alias: str, keys: ErasureKeys = NO_KEYS) -> None:
        if not re.match(r"^[a-z_][a-z0-9_]*$", alias):
            raise ValueError("alias must be a plain identifier")
        self.first = first_param
        self.a = alias
        self.keys = keys
        self.params: list[Any] = []

    def p(self, value: Any, cast: str = "") -> str:
        self.params.append(value)
        return f"${self.first + len(self.params) - 1}{'::' + cast if cast else ''}"

    def node(self, n: Node) -> str:
        if isinstance(n, Everything):
            return "true"
        if isinstance(n, BoolOp):
            joiner = " AND " if n.op == "and" else " OR "
            return "(" + joiner.join(self.node(i) for i in n.items) + ")"
        if isinstance(n, Not):
            return f"(NOT {self.node(n.item)})"
        if isinstance(n, Member):
            sql = f"({self.a}.tags @> {self.p([n.value.value], 'text[]')})"
            return f"(NOT {sql})" if n.negated else sql
        if isinstance(n, Exists):
            return self.exists(n.field)
        if isinstance(n, InList):
            return self.in_list(n)
        return self.compare(n)

    def exists(self, f: Field) -> str:
        if f.kind == "attribute":
            return f"({self.a}.attributes ? {self.p(f.key)})"
        if f.kind == "tags":
            return f"(cardinality({self.a}.tags) > 0)"
        return f"({self.a}.{f.sql} IS NOT NULL)"

    def rhs(self, v: Value) -> str:
        if v.kind == "now":
            if v.shift is None:
                return "now()"
            sign, interval = v.shift
            return f"(now() {'-' if sign == '-' else '+'} {self.p(interval, 'text')}::interval)"
        if v.kind == "timestamp":
            return self.p(v.value, "timestamptz")
        if v.kind == "number":
            return self.p(v.value, "numeric")
        if v.kind == "bool":
            return self.p(v.value, "boolean")
        return self.p(v.value, "text")

    def compare(self, n: Compare) -> str:
        f, op, v = n.field, n.op, n.value
        if f.kind == "suppressed":
            ring = self.keys
            versions = sorted(ring.keys)
            # The hashes that keep an erased number suppressed, in SQL (shared/erasure.py): under
            # every configured key version (the keys passed as parameters) and legacy while matched.
            forms = sql_hash_forms(
                f"{self.a}.tenant_id", f"{self.a}.phone_e164",
                self.p(versions, "text[]") if versions else None,
                self.p([ring.keys[v] for v in versions], "bytea[]") if versions else None,
                ring.match_legacy,
            )
            hashed = (
                f" OR EXISTS (SELECT 1 FROM suppression_hashes h WHERE h.tenant_id = {self.a}.tenant_id"
                f" AND h.phone_hash IN ({' UNION ALL '.join(forms)}))" if forms else ""
            )
            test = (
                f"(EXISTS (SELECT 1 FROM suppressions s WHERE s.tenant_id = {self.a}.tenant_id AND s.phone_e164 = {self.a}.phone_e164)"
                f"{hashed})"
            )
            return test if _wants_true(op, v) else f"(NOT {test})"
        if f.kind == "consent":
            # Two fixed spellings, chosen by the (checked) boolean: `= true` can use the partial
            # index on granted consent; NULL (never asked) counts as not granted.
            col = f"{self.a}.{f.sql}"
            return f"({col} = true)" if _wants_true(op, v) else f"({col} IS NOT TRUE)"
        if f.kind == "column":
            col = f"{self.a}.{f.sql}"
            if op == "!=":
                return f"({col} IS DISTINCT FROM {self.rhs(v)})"
            return f"({col} {op} {self.rhs(v)})"
        # attributes
        if op in ("=", "!=") and v.kind in ("string", "number", "bool"):
            contains = f"({self.a}.attributes @> {self.p(json.dumps({f.key: _json_value(v)}), 'text')}::jsonb)"
            return contains if op == "=" else f"(NOT {contains})"
        key = self.p(f.key, "text")
        if v.kind in ("now", "timestamp"):
            lhs = f"audience_ts({self.a}.attributes -> {key})"
        elif v.kind == "number":
            lhs = f"audience_num({self.a}.attributes -> {key})"
        else:
            lhs = f"(CASE WHEN jsonb_typeof({self.a}.attributes -> {key}) = 'string' THEN {self.a}.attributes ->> {key} END)"
        if op == "!=":
            return f"({lhs} IS DISTINCT FROM {self.rhs(v)})"
        return f"({lhs} {op} {self.rhs(v)})"

    def in_list(self, n: InList) -> str:
        f = n.field
        if f.kind == "attribute":
            tests = [f"{self.a}.attributes @> {self.p(json.dumps({f.key: _json_value(v)}), 'text')}::jsonb" for v in n.values]
            sql = "(" + " OR ".join(tests) + ")"
        else:
            sql = f"coalesce({self.a}.{f.sql} = ANY({self.p([v.value for v in n.values], 'text[]')}), false)"
        return f"(NOT {sql})" if n.negated else f"({sql})"


def _wants_true(op: str, v: Value) -> bool:
    """`field = true` or `field != false`: the boolean comparison asks for true."""
    return (op == "=") == (v.value is True)


def _json_value(v: Value) -> Any:
    if v.kind == "number":
        number: Decimal = v.value
        return int(number) if number == number.to_integral_value() else float(number)
    return v.value


def compile_sql(node: Node, first_param: int = 1, alias: str = "c", keys: ErasureKeys = NO_KEYS) -> CompiledFilter:
    """SQL for ``node`` over ``contacts <alias>``, its placeholders numbered from ``first_param``.

    The expression does not filter on the tenant: callers add ``<alias>.tenant_id = $k``.
    ``keys``: the erasure keys `suppressed` checks erased numbers' hashes with (passed as
    parameters: never in the SQL text).
    """
    compiler = _Compiler(first_param, alias, keys)
    sql = compiler.node(node)
    return CompiledFilter(sql, compiler.params)


def compile_filter(text: str, first_param: int = 1, alias: str = "c") -> CompiledFilter:
    return compile_sql(parse(text), first_param, alias)


# ---------------------------------------------------------------------------------------------
# Canonical text (stored with a named segment)


def normalize(node: Node) -> str:
    """The canonical spelling of a filter: attributes spelt out, keywords lower case."""
    if isinstance(node, Everything):
        return "all"
    if isinstance(node, BoolOp):
        return f" {node.op} ".join(_group(i, node.op) for i in node.items)
    if isinstance(node, Not):
        inner = node.item
        return "not " + (f"({normalize(inner)})" if isinstance(inner, (BoolOp, Not)) else normalize(inner))
    if isinstance(node, Member):
        return f"{node.value.raw} {'not in' if node.negated else 'in'} tags"
    if isinstance(node, Exists):
        return f"exists {node.field.name}"
    if isinstance(node, InList):
        return f"{node.field.name} {'not in' if node.negated else 'in'} [{', '.join(v.raw for v in node.values)}]"
    if node.field.kind == "suppressed" and node.op == "=" and node.value.value is True:
        return "suppressed"
    return f"{node.field.name} {node.op} {node.value.raw}"


def _group(item: Node, parent_op: str) -> str:
    text = normalize(item)
    return f"({text})" if isinstance(item, BoolOp) and item.op != parent_op else text


def fields_used(node: Node) -> list[str]:
    """Every field the filter reads, in order of appearance (without repeats)."""
    seen: dict[str, None] = {}
    stack: list[Node] = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, BoolOp):
            stack.extend(reversed(n.items))
        elif isinstance(n, Not):
            stack.append(n.item)
        elif isinstance(n, Member):
            seen["tags"] = None
        elif isinstance(n, (Compare, InList, Exists)):
            seen[n.field.name] = None
    return list(seen)
