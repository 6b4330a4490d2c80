"""The tables and columns the migrations create, read from every migrations folder
(shared/migrations and services/<owner>/migrations, shared.db.MIGRATION_PACKAGES), in the one
global order the runner applies them (by file name).

A small parser for the statements Herald's migrations use (CREATE TABLE, with PARTITION BY,
ALTER TABLE ... ADD / DROP COLUMN and RENAME TO, DROP TABLE; a partition, CREATE TABLE ...
PARTITION OF, is part of its parent), good enough to list every table and its columns with their types;
tests/repo/test_data_map.py checks docs/data-map.md against it.
"""

from __future__ import annotations

import re
from pathlib import Path

from shared.db import MIGRATION_PACKAGES

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = tuple(ROOT.joinpath(*package.split("."), "migrations") for package in MIGRATION_PACKAGES)
_CONSTRAINTS = {"primary", "unique", "foreign", "check", "constraint", "exclude"}
# Columns that can hold free text or structured data (numbers, texts, user agents, URLs...).
TEXT_TYPES = re.compile(r"^(text|varchar|character|char|jsonb|json|bytea|inet|cidr|citext)\b", re.I)


def _statements(sql: str) -> list[str]:
    """Statements without comments; string literals and $$ bodies emptied (they may hold ; or --)."""
    out, cur, i, n = [], [], 0, len(sql)
    while i < n:
        if sql.startswith("--", i):
            i = sql.find("\n", i)
            i = n if i < 0 else i
        elif sql.startswith("$$", i):
            end = sql.find("$$", i + 2)
            cur.append("''")
            i = n if end < 0 else end + 2
        elif sql[i] == "'":
            j = i + 1
            while j < n and not (sql[j] == "'" and not sql.startswith("''", j)):
                j += 2 if sql.startswith("''", j) else 1
            cur.append("''")
            i = j + 1
        elif sql[i] == ";":
            out.append("".join(cur).strip())
            cur = []
            i += 1
        else:
            cur.append(sql[i])
            i += 1
    out.append("".join(cur).strip())
    return [s for s in out if s]


def _split_top(body: str) -> list[str]:
    items, depth, cur = [], 0, []
    for ch in body:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        items.append("".join(cur).strip())
    return items


def migration_paths(directory: Path | None = None) -> list[Path]:
    """The migration files of one folder, or of every folder, sorted by file name (the run order)."""
    folders = (directory,) if directory is not None else FOLDERS
    return sorted((p for folder in folders for p in folder.glob("*.sql")), key=lambda p: p.name)


def tables(directory: Path | None = None) -> dict[str, dict[str, str]]:
    """{table: {column: type}} after every migration, in file-name order."""
    out: dict[str, dict[str, str]] = {}
    for path in migration_paths(directory):
        for stmt in _statements(path.read_text()):
            flat = " ".join(stmt.split())
            flat = re.sub(r"(?i) partition by \w+ \([^()]*\)$", "", flat)
            if m := re.match(r"(?i)^alter table (?:if exists )?(\w+) rename to (\w+)$", flat):
                out[m.group(2)] = out.pop(m.group(1), {})
            elif m := re.match(r"(?i)^create table (?:if not exists )?(\w+) \((.*)\)$", flat):
                cols = out.setdefault(m.group(1), {})
                for item in _split_top(m.group(2)):
                    words = item.split()
                    if words and words[0].lower() not in _CONSTRAINTS:
                        cols[words[0]] = " ".join(words[1:3]) if len(words) > 1 else ""
            elif m := re.match(r"(?i)^alter table (?:if exists )?(?:only )?(\w+) (.*)$", flat):
                cols = out.setdefault(m.group(1), {})
                for item in _split_top(m.group(2)):
                    if a := re.match(r"(?i)^add column (?:if not exists )?(\w+) (.*)$", item):
                        cols[a.group(1)] = " ".join(a.group(2).split()[:2])
                    elif d := re.match(r"(?i)^drop column (?:if exists )?(\w+)", item):
                        cols.pop(d.group(1), None)
            elif m := re.match(r"(?i)^drop table (?:if exists )?(\w+)", flat):
                out.pop(m.group(1), None)
    return out


def views(directory: Path | None = None) -> dict[str, set[str]]:
    """{view: the tables it reads} after every migration, in file-name order."""
    out: dict[str, set[str]] = {}
    for path in migration_paths(directory):
        for stmt in _statements(path.read_text()):
            flat = " ".join(stmt.split())
            if m := re.match(r"(?i)^create (?:or replace )?view (\w+) as (.*)$", flat):
                out[m.group(1)] = set(re.findall(r"(?i)\b(?:from|join) (\w+)", m.group(2)))
            elif m := re.match(r"(?i)^drop view (?:if exists )?(\w+)", flat):
                out.pop(m.group(1), None)
    return out


def is_text(column_type: str) -> bool:
    return bool(TEXT_TYPES.match(column_type.strip()))


_TOUCH = [  # (pattern, group of the table); an index or a renamed table counts as its table
    re.compile(r"(?i)^create table (?:if not exists )?\w+ partition of (\w+)"),
    re.compile(r"(?i)^create table (?:if not exists )?(\w+)"),
    re.compile(r"(?i)^alter table (?:if exists )?(?:only )?(\w+)"),
    re.compile(r"(?i)^drop table (?:if exists )?(\w+)"),
    re.compile(r"(?i)^create (?:unique )?index (?:concurrently )?(?:if not exists )?(?:\w+ )?on (?:only )?(\w+)"),
    re.compile(r"(?i)^(?:insert into|update|delete from) (\w+)"),
    re.compile(r"(?i)^create (?:or replace )?view (\w+)"),
    re.compile(r"(?i)^create (?:or replace )?(?:constraint )?trigger \w+ .*? on (\w+)"),
]


def touched(directory: Path | None = None) -> dict[Path, set[str]]:
    """{migration file: the tables it creates, alters, indexes, drops, fills or puts a view or a
    trigger on}, in file-name order. An index (DROP / ALTER INDEX) counts as its table, a renamed
    table as the table it was; a name the parser cannot place is returned as ``?name``."""
    out: dict[Path, set[str]] = {}
    index_of: dict[str, str] = {}  # index -> table
    was: dict[str, str] = {}  # name after a rename -> the first name
    for path in migration_paths(directory):
        found = out.setdefault(path, set())
        for stmt in _statements(path.read_text()):
            flat = " ".join(stmt.split())
            if m := re.match(r"(?i)^(?:drop|alter) index (?:if exists )?(\w+)(?: rename to (\w+))?", flat):
                name = m.group(1)  # a primary key's index is <table>_pkey unless named
                table = index_of.get(name) or (was.get(name[:-5], name[:-5]) if name.endswith("_pkey") else "?" + name)
                if m.group(2):
                    index_of[m.group(2)] = table
                found.add(table)
                continue
            for pattern in _TOUCH:
                if m := pattern.match(flat):
                    table = m.group(1)
                    if i := re.match(r"(?i)^create (?:unique )?index (?:concurrently )?(?:if not exists )?(\w+) on", flat):
                        index_of[i.group(1)] = was.get(table, table)
                    if r := re.match(r"(?i)^alter table (?:if exists )?(\w+) rename to (\w+)$", flat):
                        was[r.group(2)] = was.get(r.group(1), r.group(1))
                    found.add(was.get(table, table))
                    break
    return out
