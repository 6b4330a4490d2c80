"""One owner per table: every service's SQL against the ownership map in docs/data-map.md.

The `owner` column of the "Tables" section says which service owns each table. A service reads
another service's rows only through a view the owner publishes for it: the "Shared views"
section lists each view with its owner (the owner of the tables it reads), its columns, its
readers, why they read it and what replaces it. This test reads every string literal (f-strings
too) in `services/<service>/**.py`, and in the `shared/` functions, classes and constants the
service uses (what it imports, following the names used inside them: that SQL runs as the
service's), finds the tables and views its SQL names and fails on any write to another's table,
on a read of another's table (or of a view not listed as shared with that service), and on a
listed reader that no code makes any more. No I/O but reading the source."""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from herald_tools import schema

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "data-map.md"
SERVICES = ROOT / "services"
EACH = "each service"  # a table each service keeps its own rows in (erasure_audit): writes allowed, reads through a shared view
EACH_PRIVATE = "each service, its own rows only"  # nothing reads another's rows (retention_runs): reads allowed too

_TABLE = r"(?:ONLY\s+)?\"?([a-z_][a-z0-9_]*)\"?\b"
_NAME = _TABLE + r"(?!\s*\()"  # read from a table, not from a function (unnest(...), now())
# SQL keywords are upper case in Herald's code: prose ("read from the table") is not SQL.
WRITE = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|TRUNCATE(?:\s+TABLE)?|MERGE\s+INTO|LOCK\s+TABLE)\s+" + _TABLE)
READ = re.compile(r"(?<!DISTINCT )(?<!DELETE )\b(?:FROM|JOIN|USING)\s+" + _NAME)


@dataclass(frozen=True)
class Access:
    service: str
    table: str
    kind: str  # "read" or "write"
    where: str  # path:line


def _section(title: str) -> list[list[str]]:
    text = DOC.read_text()
    body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in body.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]
    return [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]


def owners() -> dict[str, str]:
    """Table -> owning service (or "each service"), from the `owner` column."""
    out = {}
    for cells in _section("Tables"):
        table = cells[0].strip("`")
        out[table] = (EACH_PRIVATE if cells[1].startswith(EACH_PRIVATE) else EACH if cells[1].startswith(EACH)
                      else cells[1])
    return out


def with_views(owner: dict[str, str]) -> dict[str, str]:
    """The owners, and each view as owned by the owner of the tables it reads (a read of the view
    is a read of them; a view over a view has the owner of the tables beneath)."""
    out = dict(owner)
    views = schema.views()

    def bases(view: str, seen: frozenset[str] = frozenset()) -> set[str]:
        assert view not in seen, f"view {view} reads itself"
        found: set[str] = set()
        for b in views[view]:
            found |= bases(b, seen | {view}) if b in views and b not in owner else {b}
        return found

    for view in views:
        owned = {owner[b] for b in bases(view) if b in owner}
        assert len(owned) == 1, f"view {view} reads tables of {owned or 'no known owner'}"
        out[view] = owned.pop()
    return out


@dataclass(frozen=True)
class SharedView:
    owner: str
    columns: tuple[str, ...]
    readers: frozenset[str]
    why: str
    removed_by: str


def shared_views() -> dict[str, SharedView]:
    """View -> what "Shared views" says of it."""
    out = {}
    for view, owner, columns, readers, why, removed_by in _section("Shared views"):
        name = view.strip("`")
        assert name not in out, f"{name} listed twice"
        out[name] = SharedView(owner, tuple(re.findall(r"`([a-z_0-9]+)`", columns)),
                               frozenset(r.strip() for r in readers.split(",")), why, removed_by)
    return out


def view_columns(view: str, directory: Path | None = None) -> tuple[str, ...]:
    """The output columns of a view as its last CREATE VIEW names them (``x AS y`` is y)."""
    found: tuple[str, ...] = ()
    for path in schema.migration_paths(directory):
        for stmt in schema._statements(path.read_text()):
            flat = " ".join(stmt.split())
            if m := re.match(rf"(?i)^create (?:or replace )?view {view} as select (.*?) from ", flat):
                found = tuple(re.split(r"[ .]", item.strip())[-1] for item in schema._split_top(m.group(1)))
    return found


def service_names() -> list[str]:
    return sorted(p.name for p in SERVICES.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def literals(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal with its line; an f-string's holes become ``{}``."""
    out, parts = [], set()
    for node in ast.walk(tree):  # parents come before their children
        if isinstance(node, ast.JoinedStr):
            parts.update(id(v) for v in node.values)
            text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}" for v in node.values)
            out.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in parts:
            out.append((node.lineno, node.value))
    return out


def accesses_in(service: str, source: str | ast.AST, where: str, tables: set[str]) -> list[Access]:
    found = []
    for line, text in literals(ast.parse(source) if isinstance(source, str) else source):
        for kind, pattern in (("write", WRITE), ("read", READ)):
            for m in pattern.finditer(text):
                if m.group(1) in tables:
                    found.append(Access(service, m.group(1), kind, f"{where}:{line}"))
    return found


@functools.cache
class _Module:
    """A shared/ module's top-level functions, classes and constants, and what it imports from shared/."""

    def __init__(self, name: str) -> None:
        base = ROOT.joinpath(*name.split("."))
        self.path = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()), None)
        tree = ast.parse(self.path.read_text()) if self.path else ast.Module(body=[], type_ignores=[])
        self.names: dict[str, ast.AST] = {}
        self.imports: dict[str, tuple[str, str]] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.names[node.name] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name):
                        self.names[target.id] = node
            elif isinstance(node, ast.ImportFrom):
                self.imports |= {a.asname or a.name: (node.module, a.name) for a in node.names
                                 if node.level == 0 and node.module and node.module.startswith("shared")}


def shared_imports(tree: ast.AST) -> set[tuple[str, str]]:
    return {(node.module, a.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.level == 0 and node.module and node.module.startswith("shared") for a in node.names}


def library_code(roots: set[tuple[str, str]]) -> list[tuple[Path, ast.AST]]:
    """The shared/ functions, classes and constants reachable from what a service imports
    (following names used inside them, across shared/ modules): their SQL runs as the service's."""
    seen, todo, out = set(), list(roots), []
    while todo:
        module, name = todo.pop()
        if (module, name) in seen:
            continue
        seen.add((module, name))
        m = _Module(module)
        if name in m.imports:
            todo.append(m.imports[name])
        if name not in m.names or m.path is None:
            continue
        out.append((m.path, m.names[name]))
        for used in {n.id for n in ast.walk(m.names[name]) if isinstance(n, ast.Name)}:
            if used in m.names:
                todo.append((module, used))
            elif used in m.imports:
                todo.append(m.imports[used])
    return out


def accesses(tables: set[str]) -> list[Access]:
    found = []
    for service in service_names():
        roots = set()
        for path in sorted((SERVICES / service).rglob("*.py")):
            tree = ast.parse(path.read_text())
            roots |= shared_imports(tree)
            found += accesses_in(service, tree, str(path.relative_to(ROOT)), tables)
        for path, node in library_code(roots):
            found += accesses_in(service, node, str(path.relative_to(ROOT)), tables)
    return found


def violations(found: list[Access], owner: dict[str, str], shared: dict[str, SharedView]) -> list[str]:
    bad = []
    for a in found:
        own = owner[a.table]
        if own == a.service or own == EACH_PRIVATE or (own == EACH and a.kind == "write"):
            continue
        if a.kind == "read" and a.table in shared and a.service in shared[a.table].readers:
            continue
        if a.kind == "write":
            why = "make it an event the owner applies"
        elif a.table in shared:
            why = f"add {a.service} to the readers of {a.table} in docs/data-map.md, 'Shared views', with a reason"
        else:
            why = ("read it through a view its owner publishes and lists in docs/data-map.md, 'Shared views'"
                   " (columns, readers, why)")
        bad.append(f"{a.where}: {a.service} {a.kind}s {a.table} (owner: {own}); {why}")
    return bad


def test_every_table_has_one_known_owner() -> None:
    services = set(service_names())
    owner = owners()
    assert set(owner) == set(schema.tables())
    assert {t: o for t, o in owner.items() if o not in services and o not in (EACH, EACH_PRIVATE)} == {}


def test_no_service_touches_another_services_table_but_through_its_shared_views() -> None:
    owner = with_views(owners())
    assert violations(accesses(set(owner)), owner, shared_views()) == []


def test_every_listed_reader_still_reads_the_view() -> None:
    owner = with_views(owners())
    made = {(a.service, a.table) for a in accesses(set(owner)) if a.kind == "read"}
    listed = {(r, view) for view, v in shared_views().items() for r in v.readers}
    assert sorted(listed - made) == [], "stale readers in 'Shared views' (remove them, and a view no one reads)"


def test_every_shared_view_is_declared_by_its_owner_with_its_columns() -> None:
    owner, services, views = with_views(owners()), set(service_names()), schema.views()
    for name, v in shared_views().items():
        assert name in views, f"{name} is listed in 'Shared views' but no migration creates it"
        assert name.startswith("shared_"), f"{name}: shared views are named shared_<what>"
        assert v.owner == owner[name], f"{name}: its owner is {owner[name]} (the owner of its tables), not {v.owner}"
        assert v.columns == view_columns(name), f"{name}: the columns listed are not the view's {view_columns(name)}"
        assert v.readers and v.readers <= services and v.owner not in v.readers, (name, v.readers)
        assert len(v.why) > 20 and re.search(r"#\d+", v.removed_by), name
    unlisted = sorted(view for view in views if view.startswith("shared_") and view not in shared_views())
    assert unlisted == [], "views named shared_ but not listed in 'Shared views'"


def not_plain(directory: Path | None = None) -> list[str]:
    """Shared views that are more than ``SELECT columns FROM one_table``."""
    bad = []
    for path in schema.migration_paths(directory):
        for stmt in schema._statements(path.read_text()):
            flat = " ".join(stmt.split())
            if m := re.match(r"(?i)^create (?:or replace )?view (shared_\w+) as (.*)$", flat):
                if not re.fullmatch(r"(?i)select (?!distinct\b)[\w., ]+ from \w+", m.group(2)):
                    bad.append(m.group(1))
    return bad


def test_a_shared_view_is_a_plain_projection(tmp_path: Path) -> None:
    """No aggregate, DISTINCT, join, filter or subquery: PostgreSQL inlines the view into the
    reader's query, so the base table's indexes serve it as they served the reader before."""
    assert not_plain() == []
    (tmp_path / "0001_x.sql").write_text(
        "CREATE VIEW shared_a AS SELECT a, b AS c, t.d FROM t;\n"
        "CREATE VIEW shared_counts AS SELECT state, count(*) AS n FROM t GROUP BY state;\n"
        "CREATE VIEW shared_joined AS SELECT t.a FROM t JOIN u USING (a);\n"
        "CREATE VIEW shared_distinct AS SELECT DISTINCT a FROM t;\n"
        "CREATE VIEW shared_some AS SELECT a FROM t WHERE a > 1;\n")
    assert not_plain(tmp_path) == ["shared_counts", "shared_joined", "shared_distinct", "shared_some"]
    assert view_columns("shared_a", tmp_path) == ("a", "c", "d")


def test_a_new_cross_service_access_fails() -> None:
    owner = with_views(owners())
    source = '''
SQL = """
UPDATE campaigns SET state = 'paused' FROM tenants t WHERE t.tenant_id = campaigns.tenant_id
"""
async def f(conn, rows):
    await conn.execute(f"DELETE FROM messages WHERE message_id = ANY($1) AND x IS DISTINCT FROM {rows}")
    await conn.fetch("SELECT count(*) FROM unnest($1::text[]) AS k(t) JOIN suppressions s ON s.tenant_id = k.t")
    await conn.execute("INSERT INTO dispatch_claims (message_id) VALUES ($1)")
    await conn.fetch("SELECT state FROM shared_campaign_states WHERE campaign_id = $1")
    await conn.fetch("SELECT 1 FROM shared_contacts c JOIN shared_tenant_numbers n USING (tenant_id)")
    log.info("read from tenants, update contacts")  # prose, not SQL
'''
    found = accesses_in("dispatcher", source, "x.py", set(owner))
    assert {(a.table, a.kind) for a in found} == {
        ("campaigns", "write"), ("tenants", "read"), ("messages", "write"), ("suppressions", "read"),
        ("dispatch_claims", "write"), ("shared_campaign_states", "read"), ("shared_contacts", "read"),
        ("shared_tenant_numbers", "read"),
    }
    bad = violations(found, owner, shared_views())
    # campaign states are shared with the dispatcher; the base tables and the audience views are not
    assert len(bad) == 6 and all("dispatcher" in b for b in bad)
    assert any("dispatcher writes campaigns (owner: ingest)" in b for b in bad)
    assert any("dispatcher reads tenants (owner: ingest); read it through a view" in b for b in bad)
    assert any("dispatcher reads shared_contacts (owner: ingest); add dispatcher to the readers" in b for b in bad)
    assert not any("shared_campaign_states" in b for b in bad)
