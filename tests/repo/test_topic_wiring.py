"""The topic catalogue (shared/topics.py, docs/topics.md) agrees with the services' code.

Read from the source, never run:

- a service *consumes* the topics of its ``run_service(name, settings, [topics], wire)`` call
  and of every ``Lane(name, group, [topics], handler)`` it builds;
- a service *produces* a topic when code it can reach builds ``Outgoing(topic, ...)``: code in
  its own package, and whatever function or class of shared/ (or of its own package) that code
  names, followed transitively (shared.service.run_service reaches the batch consumer, whose
  dead letters go to rejected.v1). A topic picked at run time by a helper of shared/topics.py
  (``accepted_topic``) counts as every topic the helper can return.

Any other way of naming a topic there fails the test, so the reading stays complete.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared import topics as topics_module
from shared.topics import ALL, SERVICES, Topic

ROOT = Path(__file__).resolve().parents[2]
# Tooling, not a service: it runs beside the stack (docs/architecture.md) and publishes nothing
# a service would own. Kept out so the services' reading does not depend on it.
TOOLING = ("shared/cli.py", "shared/admin.py", "shared/devtools/")
TOPICS: dict[str, Topic] = {name: value for name, value in vars(topics_module).items() if isinstance(value, Topic)}
Key = tuple[str, str]  # (module, top-level name)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # local name -> (module, name or None)
    defs: dict[str, ast.AST] = field(default_factory=dict)


def load_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for top in ("services", "shared"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(TOOLING):
                continue
            name = module_name(path)
            mod = Module(name, path, ast.parse(path.read_text(), str(path)))
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for node in ast.walk(mod.tree):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname:
                            mod.imports[alias.asname] = (alias.name, None)
                        else:
                            mod.imports[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                        base = f"{anchor}.{base}" if base else anchor
                    for alias in node.names:
                        mod.imports[alias.asname or alias.name] = (base, alias.name)
            for node in mod.tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    mod.defs[node.name] = node
            modules[name] = mod
    return modules


MODULES = load_modules()


def resolve(module: str, name: str, seen: frozenset[Key] = frozenset()) -> Key | str | None:
    """What ``name`` means in ``module``: a top-level def (module, name), a module (its dotted
    name), or None (a builtin, a local, a third-party name). Follows re-exports."""
    if (module, name) in seen:
        return None
    mod = MODULES.get(module)
    if mod is None:
        return None
    if name in mod.defs:
        return (module, name)
    if name in mod.imports:
        target, attr = mod.imports[name]
        if attr is None:
            return target
        if f"{target}.{attr}" in MODULES:
            return f"{target}.{attr}"
        return resolve(target, attr, seen | {(module, name)}) or (target, attr)
    return None


def topic_of_name(module: str, name: str) -> Topic | None:
    key = resolve(module, name)
    if isinstance(key, tuple) and key[0] == "shared.topics" and key[1] in TOPICS:
        return TOPICS[key[1]]
    if module == "shared.topics" and name in TOPICS:
        return TOPICS[name]
    return None


def helper_topics(name: str) -> set[str]:
    """The topics a helper of shared/topics.py can return (``accepted_topic``: both accepted lanes)."""
    func = MODULES["shared.topics"].defs[name]
    found: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Return) and node.value is not None:
            found |= {TOPICS[n.id].suffix for n in ast.walk(node.value) if isinstance(n, ast.Name) and n.id in TOPICS}
            found |= {t for n in ast.walk(node.value) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                      and n.func.id in MODULES["shared.topics"].defs for t in helper_topics(n.func.id)}
    return found


def where(mod: Module, node: ast.AST) -> str:
    return f"{mod.path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def topics_of(mod: Module, expr: ast.expr, scope: ast.AST) -> set[str]:
    """The topics (suffixes) ``expr``, the first argument of an ``Outgoing``, can be."""
    if isinstance(expr, ast.Name):
        topic = topic_of_name(mod.name, expr.id)
        if topic is not None:
            return {topic.suffix}
        values = [n.value for n in ast.walk(scope) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == expr.id for t in n.targets)]
        if values:
            return set().union(*(topics_of(mod, v, scope) for v in values))
    if isinstance(expr, ast.IfExp):
        return topics_of(mod, expr.body, scope) | topics_of(mod, expr.orelse, scope)
    if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name):
        key = resolve(mod.name, expr.func.id)
        if isinstance(key, tuple) and key[0] == "shared.topics":
            return helper_topics(key[1])
    if isinstance(expr, ast.Attribute) and expr.attr == "topic":
        return set()  # another Outgoing's topic, passed on unchanged: counted where that one is built
    raise AssertionError(f"{where(mod, expr)}: cannot tell which topic Outgoing({ast.unparse(expr)}, ...) publishes to")


def is_call_to(mod: Module, node: ast.AST, module: str, name: str) -> bool:
    if not isinstance(node, ast.Call):
        return False
    if isinstance(node.func, ast.Name):
        return resolve(mod.name, node.func.id) == (module, name) or (mod.name == module and node.func.id == name)
    if isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
        return resolve(mod.name, node.func.value.id) == module and node.func.attr == name
    return False


@dataclass
class Unit:
    """A top-level function or class: what it publishes itself and what it names."""

    produces: set[str]  # topic suffixes
    refs: set[Key]


def read_unit(mod: Module, node: ast.AST) -> Unit:
    produces: set[str] = set()
    refs: set[Key] = set()
    scopes = [n for n in ast.walk(node) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] or [node]
    for scope in scopes:
        for n in ast.walk(scope):
            if is_call_to(mod, n, "shared.kafka", "Outgoing") and n.args:
                produces |= topics_of(mod, n.args[0], scope)
    for n in ast.walk(node):
        key: Key | str | None = None
        if isinstance(n, ast.Name):
            key = resolve(mod.name, n.id)
        elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
            target = resolve(mod.name, n.value.id)
            if isinstance(target, str):
                key = resolve(target, n.attr) if target in MODULES else None
        if isinstance(key, tuple) and key[0] in MODULES and key[1] in MODULES[key[0]].defs:
            refs.add(key)
    return Unit(produces, refs)


UNITS: dict[Key, Unit] = {(m.name, name): read_unit(m, node) for m in MODULES.values() for name, node in m.defs.items()}


def in_service(module: str, service: str) -> bool:
    return module == f"services.{service}" or module.startswith(f"services.{service}.")


def reachable_topics(start: set[Key], service: str) -> dict[str, Key]:
    """Every topic the units in ``start`` can publish to, with one unit that builds it; another
    service's code is followed no further (what it publishes is that service's)."""
    found: dict[str, Key] = {}
    stack, seen = list(start), set(start)
    while stack:
        key = stack.pop()
        unit = UNITS[key]
        for topic in unit.produces:
            found.setdefault(topic, key)
        for ref in unit.refs - seen:
            if ref[0].startswith("services.") and not in_service(ref[0], service):
                continue
            seen.add(ref)
            stack.append(ref)
    return found


def service_modules(service: str) -> Iterator[Module]:
    return (m for m in MODULES.values() if in_service(m.name, service))


def produced_by_code(service: str) -> dict[str, str]:
    """Topic suffix -> a function or class of the service's reach that publishes there."""
    start = {(m.name, name) for m in service_modules(service) for name in m.defs}
    return {topic: f"{key[0]}.{key[1]}" for topic, key in reachable_topics(start, service).items()}


def consumed_by_code(service: str) -> dict[str, str]:
    """Topic suffix -> where a lane or run_service of the service consumes it."""
    found: dict[str, str] = {}
    for mod in service_modules(service):
        for node in ast.walk(mod.tree):
            if is_call_to(mod, node, "shared.service", "Lane"):
                arg = node.args[2] if len(node.args) > 2 else next((k.value for k in node.keywords if k.arg == "topics"), None)
            elif is_call_to(mod, node, "shared.service", "run_service"):
                arg = node.args[2] if len(node.args) > 2 else next((k.value for k in node.keywords if k.arg == "topics"), None)
            else:
                continue
            assert isinstance(arg, (ast.List, ast.Tuple)), f"{where(mod, node)}: consumer topics must be a literal list"
            for element in arg.elts:
                topic = topic_of_name(mod.name, element.id) if isinstance(element, ast.Name) else None
                assert topic is not None, f"{where(mod, element)}: {ast.unparse(element)} is not a topic of shared/topics.py"
                found.setdefault(topic.suffix, where(mod, node))
    return found


ALL_SERVICES = sorted({p.parent.name for p in (ROOT / "services").glob("*/__init__.py")})


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_a_service_publishes_only_to_topics_the_catalogue_lists_for_it(service: str) -> None:
    code = produced_by_code(service)
    listed = {t.suffix for t in ALL if service in t.producing_services()}
    unlisted = sorted(f"{t} (built in {code[t]})" for t in set(code) - listed)
    assert not unlisted, f"{service} publishes to topics shared/topics.py does not list it as a producer of: {unlisted}"
    missing = sorted(listed - set(code))
    assert not missing, f"shared/topics.py lists {service} as a producer of {missing}, but no code of it publishes there"


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_a_service_consumes_only_topics_the_catalogue_lists_for_it(service: str) -> None:
    code = consumed_by_code(service)
    listed = {t.suffix for t in ALL if service in t.consuming_services()}
    unlisted = sorted(f"{t} ({code[t]})" for t in set(code) - listed)
    assert not unlisted, f"{service} consumes topics shared/topics.py does not list it as a consumer of: {unlisted}"
    missing = sorted(listed - set(code))
    assert not missing, f"shared/topics.py lists {service} as a consumer of {missing}, but none of its lanes reads them"


def test_the_catalogue_names_only_real_services_and_the_reading_finds_each_one() -> None:
    assert set(SERVICES) <= set(ALL_SERVICES)
    for service in SERVICES:  # a reading that found nothing would pass the tests above vacuously
        assert consumed_by_code(service), f"no consumer lane of {service} was found"
        assert produced_by_code(service), f"no topic {service} publishes to was found"
    for topic in ALL:
        for party in (*topic.producers, *topic.consumers):
            first = party.split(" ", 1)[0]
            assert first in SERVICES or first not in ALL_SERVICES, f"{topic.suffix}: {party!r}"
