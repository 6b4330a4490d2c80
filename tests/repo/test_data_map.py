"""docs/data-map.md against the migrations and the topic table: every table listed, every
column that can hold text (or is named like personal data) classified, no stale names, every
topic with its retention."""

from __future__ import annotations

import re
from pathlib import Path

from herald_tools import schema
from shared.topics import ALL, PERSONAL_DATA_RETENTION

DOC = Path(__file__).resolve().parents[2] / "docs" / "data-map.md"
PERSONAL_NAME = re.compile(
    r"phone|e164|number|body|text|email|name|(^|_)ip($|_)|user_agent|url|address|proof|payload|metadata|attributes"
)
DAY_MS = 24 * 3600 * 1000


def _section(title: str) -> list[list[str]]:
    text = DOC.read_text()
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| `")]
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]


def _names(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z_][a-z0-9_]*)`", cell))


def doc_tables() -> dict[str, tuple[set[str], set[str]]]:
    out = {}
    for cells in _section("Tables"):
        (table,) = _names(cells[0])
        assert table not in out, f"{table} listed twice"
        out[table] = (_names(cells[2]), _names(cells[3]))
    return out


def must_be_mapped(columns: dict[str, str]) -> set[str]:
    return {c for c, t in columns.items() if schema.is_text(t) or PERSONAL_NAME.search(c)}


def test_the_parser_reads_the_migrations() -> None:
    found = schema.tables()
    assert {"phone_e164", "first_name", "attributes", "tags"} <= set(found["contacts"])
    assert found["messages"]["to_e164"].startswith("text") and "part_status" in found["messages"]  # ALTER TABLE ... ADD COLUMN
    assert "body" in found["inbound_messages"] and "test_numbers" in found["campaigns"]
    assert schema.is_text("text[] NOT") and schema.is_text("jsonb NOT") and not schema.is_text("uuid NOT")


def test_every_table_of_the_migrations_is_mapped_and_no_other() -> None:
    tables, mapped = schema.tables(), doc_tables()
    assert sorted(set(tables) - set(mapped)) == [], "tables missing from docs/data-map.md"
    assert sorted(set(mapped) - set(tables)) == [], "docs/data-map.md lists tables the migrations do not create"


def test_every_text_or_personal_looking_column_is_classified() -> None:
    tables, mapped = schema.tables(), doc_tables()
    problems = []
    for table, columns in tables.items():
        personal, other = mapped.get(table, (set(), set()))
        if both := personal & other:
            problems.append(f"{table}: {sorted(both)} listed as personal and as other")
        if missing := must_be_mapped(columns) - personal - other:
            problems.append(f"{table}: {sorted(missing)} not in docs/data-map.md (personal data or other?)")
        if stale := (personal | other) - set(columns):
            problems.append(f"{table}: {sorted(stale)} in docs/data-map.md but not in the migrations")
    assert problems == []


def test_a_new_personal_column_would_fail_the_map(tmp_path: Path) -> None:
    for path in schema.migration_paths():
        (tmp_path / path.name).write_text(path.read_text())
    (tmp_path / "9999_new.sql").write_text("-- a new column; with a ; and ' in a comment\n"
                                           "ALTER TABLE messages ADD COLUMN recipient_email text, ADD COLUMN n int;\n")
    columns = schema.tables(tmp_path)["messages"]
    personal, other = doc_tables()["messages"]
    assert must_be_mapped(columns) - personal - other == {"recipient_email"}


def test_every_topic_is_listed_with_its_retention() -> None:
    rows = {next(iter(re.findall(r"`([^`]+)`", cells[0]))): cells for cells in _section("Topics")}
    assert set(rows) == {t.name("herald.") for t in ALL}
    for topic in ALL:
        personal, retention = rows[topic.name("herald.")][1], rows[topic.name("herald.")][2]
        ms = topic.config.get("retention.ms")
        assert retention == ("broker default" if ms is None else f"{int(ms) // DAY_MS} days"), topic.suffix
        if personal != "—" and topic.suffix != "rejected.v1":
            assert topic.config == PERSONAL_DATA_RETENTION, f"{topic.suffix} carries personal data: short retention"


def test_the_parser_follows_renames_and_partitioned_tables(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE events (id uuid PRIMARY KEY, body text);\n")
    (tmp_path / "0002_b.sql").write_text(
        "ALTER TABLE events RENAME TO events_old;\n"
        "CREATE TABLE events (id uuid NOT NULL, at timestamptz NOT NULL, note text,\n"
        "    PRIMARY KEY (id, at)) PARTITION BY RANGE (at);\n"
        "CREATE TABLE events_default PARTITION OF events DEFAULT;\n"
        "DO $$ BEGIN EXECUTE format('CREATE TABLE %I PARTITION OF events', 'x'); END $$;\n"
        "DROP TABLE events_old;\n")
    found = schema.tables(tmp_path)
    assert found == {"events": {"id": "uuid NOT", "at": "timestamptz NOT", "note": "text"}}
    assert "message_events" in schema.tables() and "message_events_default" not in schema.tables()
