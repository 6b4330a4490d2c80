"""The segment filter language: parsing, validation, SQL with parameters only, limits."""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.ingest.audience import segments as s
from services.ingest.audience.segments import SegmentError, compile_filter, normalize, parse


def test_the_issue_example() -> None:
    c = compile_filter("country = \"ES\" and \"vip\" in tags and last_purchase_at < now() - interval '30 days'")
    assert c.sql == (
        "((c.country = $1::text) AND (c.tags @> $2::text[])"
        " AND (audience_ts(c.attributes -> $3::text) < (now() - $4::text::interval)))"
    )
    assert c.params == ["ES", ["vip"], "last_purchase_at", "30 days"]


@pytest.mark.parametrize(
    ("text", "sql", "params"),
    [
        ("all", "true", []),
        ('plan = "pro"', "(c.attributes @> $1::text::jsonb)", ['{"plan": "pro"}']),
        ("attributes.vip = true", "(c.attributes @> $1::text::jsonb)", ['{"vip": true}']),
        ("score != 5", "(NOT (c.attributes @> $1::text::jsonb))", ['{"score": 5}']),
        ("score > 2.5", "(audience_num(c.attributes -> $1::text) > $2::numeric)", ["score", Decimal("2.5")]),
        ('nick < "m"', "((CASE WHEN jsonb_typeof(c.attributes -> $1::text) = 'string' THEN c.attributes ->> $1::text END) < $2::text)", None),
        ("exists attributes.plan", "(c.attributes ? $1)", ["plan"]),
        ("exists tags", "(cardinality(c.tags) > 0)", []),
        ("not exists first_name", "(NOT (c.first_name IS NOT NULL))", []),
        ('"vip" not in tags', "(NOT (c.tags @> $1::text[]))", [["vip"]]),
        ('country in ["es", "pt"]', "(coalesce(c.country = ANY($1::text[]), false))", [["ES", "PT"]]),
        ('country not in ["ES"]', "(NOT coalesce(c.country = ANY($1::text[]), false))", [["ES"]]),
        ('language != "pt_br"', "(c.language IS DISTINCT FROM $1::text)", ["pt-BR"]),
        ("consent.marketing = true", "(c.consent_marketing = true)", []),
        ("consent.marketing", "(c.consent_marketing = true)", []),
        ("consent.transactional != false", "(c.consent_transactional = true)", []),
        ("consent.marketing = false", "(c.consent_marketing IS NOT TRUE)", []),
        ("consent.marketing != true", "(c.consent_marketing IS NOT TRUE)", []),
        ("last_activity_at >= now()", "(c.last_activity_at >= now())", []),
        ('created_at > "2025-01-31"', "(c.created_at > $1::timestamptz)", [datetime(2025, 1, 31, tzinfo=UTC)]),
        ("last_activity_at < now() + interval '1  WEEK'", "(c.last_activity_at < (now() + $1::text::interval))", ["1 week"]),
    ],
)
def test_compiles_to_parameterised_sql(text, sql, params) -> None:
    compiled = compile_filter(text)
    assert compiled.sql == sql
    if params is not None:
        assert compiled.params == params


def test_keywords_are_case_insensitive_and_operators_have_aliases() -> None:
    a = compile_filter('country == "ES" AND NOT "vip" IN tags OR Exists first_name')
    b = compile_filter('country = "ES" and not "vip" in tags or exists first_name')
    assert a.sql == b.sql and a.params == b.params
    assert compile_filter('country <> "ES"').sql == compile_filter('country != "ES"').sql


def test_precedence_not_and_or() -> None:
    node = parse('a = 1 or b = 2 and not c = 3')
    assert isinstance(node, s.BoolOp) and node.op == "or"
    assert isinstance(node.items[1], s.BoolOp) and node.items[1].op == "and"
    assert isinstance(node.items[1].items[1], s.Not)


def test_placeholders_start_where_asked() -> None:
    compiled = compile_filter('country = "ES" and plan = "pro"', first_param=4)
    assert re.findall(r"\$(\d+)", compiled.sql) == ["4", "5"]
    with pytest.raises(ValueError):
        s.compile_sql(parse("all"), alias="c; DROP")


@pytest.mark.parametrize(
    "text",
    [
        'plan = "pro" and "vip" in tags',
        "not (a = 1 or b = 2) and c != 3",
        "last_activity_at < now() - interval '30 days' or not exists last_activity_at",
        'country in ["ES", "PT"] and language not in ["en"]',
        "consent.marketing = true and not suppressed",
        "suppressed = false",
        "a = 1 and (b = 2 or (c = 3 and d = 4))",
    ],
)
def test_normalized_text_means_the_same(text) -> None:
    canonical = normalize(parse(text))
    assert normalize(parse(canonical)) == canonical
    first, again = compile_filter(text), compile_filter(canonical)
    assert (first.sql, first.params) == (again.sql, again.params)


def test_bare_names_are_attributes_and_columns_win() -> None:
    assert normalize(parse('plan = "pro"')) == 'attributes.plan = "pro"'
    assert normalize(parse('country = "ES"')) == 'country = "ES"'
    assert normalize(parse('attributes.country = "Spain"')) == 'attributes.country = "Spain"'  # an attribute named like a column
    assert s.fields_used(parse('plan = "x" and "a" in tags and plan = "y" and consent.marketing')) == [
        "attributes.plan", "tags", "consent.marketing"
    ]


@pytest.mark.parametrize(
    ("text", "code", "line", "column"),
    [
        ('country = "ES" and', "unexpected_end", 1, 19),
        ('country = "ES"\n  and &', "unexpected_character", 2, 7),
        ("country = ES", "unexpected_token", 1, 11),
        ('country "ES"', "unexpected_token", 1, 9),
        ("(a = 1", "unexpected_end", 1, 7),
        ("a = 1)", "unexpected_token", 1, 6),
        ("foo.bar = 1", "unknown_field", 1, 1),
        ("attributes.a.b = 1", "unknown_field", 1, 1),
        ("consent.sms = true", "unknown_field", 1, 1),
        ("country = 5", "type_mismatch", 1, 11),
        ('country = "Spain"', "invalid_value", 1, 11),
        ('language = "castellano"', "invalid_value", 1, 12),
        ('last_activity_at < "soon"', "type_mismatch", 1, 20),
        ('last_activity_at < "2025-02-30"', "invalid_value", 1, 20),
        ("last_activity_at in [\"2025-01-01\"]", "operator_not_allowed", 1, 21),
        ('tags = "vip"', "operator_not_allowed", 1, 6),
        ('tags in ["vip"]', "operator_not_allowed", 1, 1),
        ('"vip" in plan', "operator_not_allowed", 1, 10),
        ('5 in tags', "type_mismatch", 1, 1),
        ("consent.marketing > false", "operator_not_allowed", 1, 19),
        ("vip > true", "operator_not_allowed", 1, 5),
        ("score", "incomplete_condition", 1, 1),
        ("exists suppressed", "operator_not_allowed", 1, 1),
        ("a in []", "invalid_value", 1, 6),
        ("x < now() - interval '30 dayz'", "invalid_interval", 1, 22),
        ("x = 1e20", "invalid_value", 1, 5),
        ('x = "\\x"', "invalid_value", 1, 5),
        ("x = 'a\\'b' and in = 1", "unknown_field", 1, 16),
        ("", "empty_filter", None, None),
        ("   ", "empty_filter", None, None),
    ],
)
def test_errors_say_what_and_where(text, code, line, column) -> None:
    with pytest.raises(SegmentError) as caught:
        parse(text)
    e = caught.value
    assert (e.code, e.line, e.column) == (code, line, column), str(e)
    detail = e.detail()
    assert detail["code"] == code and detail["loc"] == "filter" and detail["msg"]


def test_limits() -> None:
    with pytest.raises(SegmentError, match="characters") as e:
        parse("a = 1 or " * 500 + "a = 1")
    assert e.value.code == "filter_too_long"
    parse("(" * 40 + "a = 1 or b = 2" + ")" * 40)  # redundant brackets do not nest
    deep = "a = 1"
    for i in range(s.MAX_DEPTH + 1):
        deep = f"b{i} = 1 {'and' if i % 2 else 'or'} ({deep})"
    with pytest.raises(SegmentError) as e:
        parse(deep)
    assert e.value.code == "filter_too_deep"
    nested = "a = 1"
    for _ in range(s.MAX_DEPTH + 1):
        nested = f"not ({nested} or b = 2)"
    with pytest.raises(SegmentError) as e:
        parse(nested)
    assert e.value.code == "filter_too_deep"
    with pytest.raises(SegmentError) as e:
        parse(" and ".join(f"a{i} = {i}" for i in range(s.MAX_CONDITIONS + 1)))
    assert e.value.code == "too_many_conditions"
    parse(" and ".join(f"a{i} = {i}" for i in range(s.MAX_CONDITIONS)))  # a long flat list is fine
    with pytest.raises(SegmentError) as e:
        parse("plan in [" + ", ".join(str(i) for i in range(s.MAX_ATTRIBUTE_LIST + 1)) + "]")
    assert e.value.code == "list_too_long"
    with pytest.raises(SegmentError) as e:
        parse(f'first_name = "{"x" * (s.MAX_STRING + 1)}"')
    assert e.value.code == "invalid_value"


def test_extreme_nesting_never_overflows_the_stack() -> None:
    for text in ["(" * 3000 + "a = 1" + ")" * 3000, "not " * 999 + "a = 1", "[" * 1000]:
        with pytest.raises(SegmentError):
            parse(text)


HOSTILE = [
    "ES'; DROP TABLE contacts; --",
    "x' OR '1'='1",
    '"}\' OR 1=1 --',
    "'); DELETE FROM suppressions; --",
    "\\'; SELECT pg_sleep(10); --",
    "1 day'; DROP TABLE contacts; --",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_user_values_only_travel_as_parameters(value) -> None:
    quoted = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    for text in [f"first_name = {quoted}", f"plan = {quoted}", f"{quoted} in tags", f"first_name in [{quoted}]", f"plan != {quoted}"]:
        compiled = compile_filter(text)
        assert value not in compiled.sql
        flat = [x for p in compiled.params for x in (p if isinstance(p, list) else [p])]
        assert any(value in str(x) for x in flat), (text, compiled.params)
        # only our own fixed literals are quoted in the SQL
        assert set(re.findall(r"'[^']*'", compiled.sql)) <= {"'string'"}


@pytest.mark.parametrize(
    "text",
    [
        "first_name = 'x' OR 1=1",
        "first_name = 'x'; DROP TABLE contacts",
        "first_name = 'x' -- comment",
        "first_name = 'x' /* c */",
        "first_name = (SELECT 1)",
        "first_name = x'00'",
        "first_name = 'x' UNION SELECT 1",
        "attributes.\"plan\" = 1",
        "attributes.plan' = 1",
        "exists attributes.x'",
        "last_activity_at < now() - interval '1 day' || 'x'",
        "last_activity_at < now() - interval '1 day); DROP TABLE contacts; --'",
        "last_activity_at < pg_sleep(5)",
        "first_name = $1",
    ],
)
def test_sql_fragments_are_not_the_language(text) -> None:
    with pytest.raises(SegmentError):
        parse(text)


def test_random_input_only_ever_raises_segment_errors() -> None:
    rng = random.Random(1234)
    pieces = ['country', '=', '"ES"', 'and', 'or', 'not', '(', ')', '[', ']', ',', 'in', 'tags', 'exists', '5', '-2.5',
              'true', 'now()', '-', 'interval', "'3 days'", 'plan', '.', 'attributes', 'consent', 'marketing', '<', '>=',
              '!=', "'", '"', '\\', 'all', 'suppressed', '\n', ';', '$1', '💥', 'é']
    parsed = 0
    for _ in range(5000):
        text = " ".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        try:
            node = parse(text)
        except SegmentError as exc:
            assert exc.code and str(exc)
            continue
        parsed += 1
        compiled = s.compile_sql(node)
        assert len(re.findall(r"\$\d+", compiled.sql)) >= len(compiled.params) or not compiled.params
    assert parsed > 0


def test_parsing_reuses_one_lalr_parser(monkeypatch) -> None:
    """Parsing is fast because the LALR tables are built once, at import: compiling a filter must
    never build a parser again (speed itself is measured by the benchmark, not by a timed test)."""
    import lark

    from services.ingest.audience import segments

    def no_new_parser(*args, **kwargs):
        raise AssertionError("compile_filter built a new Lark parser")

    monkeypatch.setattr(lark, "Lark", no_new_parser)
    monkeypatch.setattr(segments, "Lark", no_new_parser)
    text = "country = \"ES\" and \"vip\" in tags and last_purchase_at < now() - interval '30 days'"
    for _ in range(3):
        assert compile_filter(text).sql
    assert segments._PARSER.options.parser == "lalr"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("last_activity_at < now() - interval '9999 years'", "interval_out_of_range"),
        ("last_activity_at > now() + interval '300 years'", "interval_out_of_range"),
        ("last_activity_at < now() - interval '99999 days'", "interval_out_of_range"),
        ("last_activity_at < now() - interval '5000 months'", "interval_out_of_range"),
        ("signup_at < now() - interval '9999 years'", "interval_out_of_range"),
        ('created_at > "0001-01-01"', "date_out_of_range"),
        ('created_at < "9999-12-31T00:00:00Z"', "date_out_of_range"),
        ('birthday < "1700-01-01"', "date_out_of_range"),
    ],
)
def test_intervals_and_dates_are_bounded(text, code) -> None:
    """A filter whose time lies outside what a date column can hold is refused when it is written,
    not found out by PostgreSQL on every page of a campaign."""
    with pytest.raises(SegmentError) as exc:
        parse(text)
    assert exc.value.code == code
    assert exc.value.detail()["code"] == code and exc.value.position is not None


@pytest.mark.parametrize(
    "text",
    [
        "last_activity_at < now() - interval '100 years'",
        "last_activity_at < now() - interval '36500 days 12 hours'",
        'created_at > "1900-01-01"',
        'created_at < "2199-12-31"',
    ],
)
def test_intervals_and_dates_within_the_bounds_parse(text) -> None:
    parse(text)
