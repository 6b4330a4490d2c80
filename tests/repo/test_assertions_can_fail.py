"""Assertions in tests/ that cannot fail, by their shape.

ruff already refuses ``assert (x, "message")`` (F631) and ``assert False`` (B011). Left is the
operator-precedence slip: ``assert state is State.OPEN or State.HALF_OPEN`` asserts nothing
(the enum member is true), nor does ``assert x == 1 or "reason"``. An ``or`` operand that is a
constant, an f-string, or a bare attribute of a class-like name (``State.OPEN``) is always
truthy; one such operand makes the whole assertion pass.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _always_true(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return bool(node.value)
    if isinstance(node, ast.JoinedStr):
        return True
    # State.OPEN, Status.DELIVERED: a member of an enum-like class named in CamelCase
    return isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id[:1].isupper() \
        and node.attr.isupper()


def vacuous_asserts(source: str, filename: str = "<test>") -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Assert):
            continue
        test = node.test
        if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or) and any(_always_true(v) for v in test.values):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(test)}")
        elif _always_true(test):
            found.append(f"{filename}:{node.lineno}: {ast.unparse(test)}")
    return found


def test_the_check_finds_the_shapes_it_is_for() -> None:
    bad = (
        "assert health.state is State.OPEN or State.HALF_OPEN\n"
        "assert x == 1 or 'the reason'\n"
        "assert f'{x}'\n"
    )
    assert len(vacuous_asserts(bad)) == 3
    good = (
        "assert health.state is State.OPEN or health.state is State.HALF_OPEN\n"
        "assert x == 1 or y\n"
        "assert health.state in (State.OPEN, State.HALF_OPEN), 'reason'\n"
        "assert 'flood' in SKIP or moved > 3\n"
    )
    assert vacuous_asserts(good) == []


def test_no_test_asserts_something_always_true() -> None:
    found = [hit for path in sorted(TESTS.rglob("*.py"))
             for hit in vacuous_asserts(path.read_text(), str(path.relative_to(TESTS.parent)))]
    assert found == [], "assertions that pass whatever happens:\n" + "\n".join(found)
