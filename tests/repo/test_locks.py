"""The lock files CI, `make` and the Dockerfile install from: complete, pinned, hashed, and
in agreement with pyproject.toml (regenerate them with `make lock`)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SIMULATOR_ONLY = {"smpp34"}


def pins(lock: str) -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, hashes), from a pip-compile style lock file."""
    found: dict[str, tuple[Version, list[str]]] = {}
    current = None
    for line in (REPO / "requirements" / lock).read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line):
            current = canonicalize_name(m.group(1))
            assert current not in found, f"{lock}: {current} pinned twice"
            found[current] = (Version(m.group(2)), [])
        elif m := re.match(r"^\s+--hash=sha256:([0-9a-f]{64})", line):
            assert current, line
            found[current][1].append(m.group(1))
        elif line.strip() and not line.lstrip().startswith("#"):
            assert line.startswith(" "), f"{lock}: not a pinned requirement: {line!r}"
    return found


def direct(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    todo = list(extras)
    while todo:
        for raw in PROJECT["optional-dependencies"][todo.pop()]:
            req = Requirement(raw)
            if canonicalize_name(req.name) == "herald":
                todo.extend(req.extras)
            else:
                reqs.append(req)
    return reqs


@pytest.mark.parametrize(("lock", "extras"), [("runtime.lock", ()), ("simulator.lock", ("simulator",)),
                                              ("dev.lock", ("test",))])
def test_every_dependency_is_pinned_with_hashes_within_its_range(lock: str, extras: tuple[str, ...]) -> None:
    locked = pins(lock)
    for name, (_, hashes) in locked.items():
        assert hashes, f"{lock}: {name} has no hash"
    for req in direct(extras):
        name = canonicalize_name(req.name)
        assert name in locked, f"{lock} lacks {name}: run `make lock`"
        assert req.specifier.contains(locked[name][0], prereleases=True), (
            f"{lock}: {name}=={locked[name][0]} is outside pyproject's {req.specifier}: run `make lock`")


def test_the_production_lock_leaves_the_simulator_out() -> None:
    assert not SIMULATOR_ONLY & set(pins("runtime.lock"))
    assert SIMULATOR_ONLY <= set(pins("simulator.lock"))


def test_the_locks_agree_on_shared_versions() -> None:
    runtime, dev = pins("runtime.lock"), pins("dev.lock")
    differ = {n: (runtime[n][0], dev[n][0]) for n in runtime if n in dev and runtime[n][0] != dev[n][0]}
    assert not differ, f"the production image and the tests would run different versions: {differ}"


def test_make_and_the_dockerfile_install_from_the_locks() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "--require-hashes -r $(LOCK)" in makefile and "LOCK   := requirements/dev.lock" in makefile
    dockerfile = (REPO / "Dockerfile").read_text()
    assert '--require-hashes --no-deps -r "requirements/${HERALD_LOCK}.lock"' in dockerfile
    assert "ARG HERALD_LOCK=runtime" in dockerfile
