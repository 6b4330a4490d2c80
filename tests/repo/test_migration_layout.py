"""Every migration lives with the owner of the tables it touches (docs/data-map.md, "owner"):
``services/<owner>/migrations/`` for a service's tables, ``shared/migrations/`` for the library's
own (the tables "each service" keeps its rows in). One global order by file name; a number is
used once across the folders, except by the parts of a split file (``NNNN_name.<owner>.sql``,
first line ``-- replaces: NNNN_name.sql``). No I/O but reading the files."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from herald_tools import schema
from shared.db import MIGRATION_PACKAGES, replaces
from tests.repo.test_table_ownership import owners, with_views

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"^(\d{4})_[a-z0-9_]+(?:\.(shared|ingest|scheduler|dispatcher|reports))?\.sql$")


def folder_owner(path: Path) -> str:
    """The owner a migrations folder stands for: the service, or "shared" (the library)."""
    return path.parent.parent.name


def table_owner() -> dict[str, str]:
    """Table (or view) -> the folder its migrations belong in."""
    return {t: "shared" if o.startswith("each service") else o for t, o in with_views(owners()).items()}


def test_every_migration_folder_is_a_listed_package() -> None:
    folders = {p.parent for p in ROOT.glob("**/migrations/*.sql") if ".venv" not in p.parts}
    assert folders == {f for f in schema.FOLDERS if f.exists()}, "a migrations folder the runner does not read"
    assert set(MIGRATION_PACKAGES) == {"shared"} | {f"services.{s}" for s in ("ingest", "scheduler", "dispatcher", "reports")}


def misplaced(touched: dict[Path, set[str]]) -> list[str]:
    owner, problems = table_owner(), []
    for path, tables in touched.items():
        for table in sorted(tables):
            if table not in owner:
                problems.append(f"{path.name}: {table} has no owner in docs/data-map.md")
            elif owner[table] != folder_owner(path):
                problems.append(f"{path.name} in {folder_owner(path)}/ touches {table}, owned by {owner[table]}")
    return problems


def test_every_migration_lives_with_the_owner_of_what_it_touches() -> None:
    assert misplaced(schema.touched()) == []


def test_names_are_unique_and_numbers_are_used_once_but_by_the_parts_of_a_split_file() -> None:
    paths = schema.migration_paths()
    names = [p.name for p in paths]
    assert sorted(n for n in set(names) if names.count(n) > 1) == [], "a file name is used twice"
    by_number: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        m = NAME.match(path.name)
        assert m, f"{path}: not NNNN_name.sql or NNNN_name.<owner>.sql"
        by_number[m.group(1)].append(path)
        original = replaces(path.read_text())
        if m.group(2):  # a part: named after its original and its folder, and says what it replaces
            assert m.group(2) == folder_owner(path), f"{path}: a part is named after its folder's owner"
            assert original == path.name.replace(f".{m.group(2)}.sql", ".sql"), f"{path}: first line -- replaces: <original>"
        else:
            assert original is None, f"{path}: only a part (NNNN_name.<owner>.sql) replaces a file"
    for number, group in by_number.items():
        originals = {replaces(p.read_text()) for p in group}
        assert len(group) == 1 or (len(originals) == 1 and None not in originals), (
            f"number {number} used by {[p.name for p in group]}: take the next free number")
    originals = {replaces(p.read_text()) for p in paths} - {None}
    assert originals.isdisjoint(names), "an original still exists beside its parts"


def test_the_parts_of_a_split_file_sort_together_in_their_global_order() -> None:
    names = [p.name for p in schema.migration_paths()]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, name in enumerate(names):
        groups[name.split(".")[0]].append(i)
    for stem, at in groups.items():
        assert at == list(range(at[0], at[0] + len(at))), f"parts of {stem} are not next to each other"


def test_the_check_would_catch_a_misplaced_file(tmp_path: Path) -> None:
    folder = tmp_path / "reports" / "migrations"
    folder.mkdir(parents=True)
    (folder / "0050_x.sql").write_text("ALTER TABLE messages ADD COLUMN x int;\nCREATE INDEX tenants_x ON tenants (name);\n"
                                       "CREATE TABLE mystery (id int);\n")
    assert misplaced(schema.touched(folder)) == ["0050_x.sql: mystery has no owner in docs/data-map.md",
                                                 "0050_x.sql in reports/ touches tenants, owned by ingest"]


def test_the_parser_places_indexes_and_renamed_tables(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE messages (id uuid);\nCREATE INDEX messages_x ON messages (id);\n")
    (tmp_path / "0002_b.sql").write_text("ALTER INDEX messages_x RENAME TO messages_y;\nDROP INDEX messages_y;\n"
                                         "ALTER TABLE messages RENAME TO messages_old;\nDROP TABLE messages_old;\n")
    found = {p.name: t for p, t in schema.touched(tmp_path).items()}
    assert found == {"0001_a.sql": {"messages"}, "0002_b.sql": {"messages"}}
    assert table_owner()["messages"] == "reports" and table_owner()["erasure_audit"] == "shared"
