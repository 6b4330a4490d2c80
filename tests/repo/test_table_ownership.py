"""One owner per table: every service's SQL against the ownership map in docs/data-map.md.

The `owner` column of the "Tables" section says which service owns each table; the
"Cross-service access" section lists, with a reason and the issue that removes it, every access
a service makes to a table it does not own. This test reads every string literal (f-strings
too) in `services/<service>/**.py`, and in the `shared/` functions, classes and constants the
service uses (what it imports, following the names used inside them: that SQL runs as the
service's), finds the tables its SQL names and fails on an unlisted
cross-service read or write, and on a listed access that no code makes any more. No I/O but
reading the source."""

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
EACH = "each service"  # a table each service keeps its own rows in (erasure_audit): writes allowed, reads listed
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
    is a read of them)."""
    out = dict(owner)
    for view, bases in schema.views().items():
        owned = {owner[b] for b in bases if b in owner}
        assert len(owned) == 1, f"view {view} reads tables of {owned or 'no known owner'}"
        out[view] = owned.pop()
    return out


def allowed() -> dict[tuple[str, str, str], tuple[str, str]]:
    """(service, table, kind) -> (reason, removed by), from "Cross-service access"."""
    out = {}
    for service, table, kind, reason, removed_by in _section("Cross-service access"):
        key = (service, table.strip("`"), kind)
        assert key not in out, f"{key} listed twice"
        out[key] = (reason, removed_by)
    return out


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


def violations(found: list[Access], owner: dict[str, str], allow: set[tuple[str, str, str]]) -> list[str]:
    bad = []
    for a in found:
        own = owner[a.table]
        if (own == a.service or own == EACH_PRIVATE or (own == EACH and a.kind == "write")
                or (a.service, a.table, a.kind) in allow):
            continue
        bad.append(f"{a.where}: {a.service} {a.kind}s {a.table} (owner: {own}); make it an event the owner applies,"
                   " or list it in docs/data-map.md, section 'Cross-service access', with a reason")
    return bad


def test_every_table_has_one_known_owner() -> None:
    services = set(service_names())
    owner = owners()
    assert set(owner) == set(schema.tables())
    assert {t: o for t, o in owner.items() if o not in services and o not in (EACH, EACH_PRIVATE)} == {}


def test_no_service_touches_a_table_it_does_not_own_unless_listed() -> None:
    owner = with_views(owners())
    assert violations(accesses(set(owner)), owner, set(allowed())) == []


def test_every_listed_cross_service_access_is_still_made() -> None:
    owner = with_views(owners())
    made = {(a.service, a.table, a.kind) for a in accesses(set(owner))}
    assert sorted(set(allowed()) - made) == [], "stale lines in 'Cross-service access' (remove them)"


def test_every_listed_access_is_cross_service_and_explained() -> None:
    owner, services = with_views(owners()), set(service_names())
    for (service, table, kind), (reason, removed_by) in allowed().items():
        assert service in services and table in owner and kind in ("read", "write")
        assert owner[table] != service, f"{service} owns {table}: nothing to list"
        assert len(reason) > 20 and re.search(r"#\d+", removed_by), (service, table)


def test_a_new_cross_service_write_fails() -> None:
    owner = owners()
    source = '''
SQL = """
UPDATE campaigns SET state = 'paused' FROM tenants t WHERE t.tenant_id = campaigns.tenant_id
"""
async def f(conn, rows):
    await conn.execute(f"DELETE FROM messages WHERE message_id = ANY($1) AND x IS DISTINCT FROM {rows}")
    await conn.fetch("SELECT count(*) FROM unnest($1::text[]) AS k(t) JOIN suppressions s ON s.tenant_id = k.t")
    await conn.execute("INSERT INTO dispatch_claims (message_id) VALUES ($1)")
    log.info("read from tenants, update contacts")  # prose, not SQL
'''
    found = accesses_in("dispatcher", source, "x.py", set(owner))
    assert {(a.table, a.kind) for a in found} == {
        ("campaigns", "write"), ("tenants", "read"), ("messages", "write"), ("suppressions", "read"),
        ("dispatch_claims", "write"),
    }
    bad = violations(found, owner, set(allowed()))
    assert len(bad) == 3 and all("dispatcher" in b for b in bad)  # campaigns and tenants reads are listed
    assert any("dispatcher writes campaigns (owner: ingest)" in b for b in bad)
