"""The local stack finds the source checkout (deploy/local/infra.py) wherever Herald is installed:
HERALD_REPO_ROOT, else upward from the current directory, else upward from herald_tools itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from herald_tools.stack import INFRA, NoSourceCheckout, find_repo_root

REPO = Path(__file__).resolve().parents[3]


def checkout(root: Path) -> Path:
    (root / INFRA).parent.mkdir(parents=True)
    (root / INFRA).write_text("# infra\n")
    (root / "docs" / "x").mkdir(parents=True)
    return root


def test_this_checkout_is_found_from_its_own_module() -> None:
    assert (REPO / "deploy" / "local" / "infra.py").is_file()
    assert find_repo_root({}, cwd=Path("/"), here=REPO / "herald_tools" / "stack.py") == REPO


def test_the_environment_setting_wins(tmp_path: Path) -> None:
    a, b = checkout(tmp_path / "a"), checkout(tmp_path / "b")
    assert find_repo_root({"HERALD_REPO_ROOT": str(a)}, cwd=b / "docs" / "x", here=b / "m.py") == a.resolve()


def test_an_environment_setting_without_infra_is_an_error(tmp_path: Path) -> None:
    good = checkout(tmp_path / "good")
    with pytest.raises(NoSourceCheckout, match="HERALD_REPO_ROOT=.* has no deploy/local/infra.py"):
        find_repo_root({"HERALD_REPO_ROOT": str(tmp_path / "elsewhere")}, cwd=good, here=good / "m.py")


def test_upward_from_the_current_directory_before_the_module(tmp_path: Path) -> None:
    here = checkout(tmp_path / "installed-from")
    work = checkout(tmp_path / "work")
    assert find_repo_root({}, cwd=work / "docs" / "x", here=here / "m.py") == work.resolve()


def test_an_installed_package_finds_the_checkout_around_its_virtualenv(tmp_path: Path) -> None:
    root = checkout(tmp_path / "herald")
    site = root / ".venv" / "lib" / "python3.11" / "site-packages" / "herald_tools"
    site.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    assert find_repo_root({}, cwd=outside, here=site / "stack.py") == root.resolve()


def test_no_checkout_anywhere_says_the_local_stack_needs_one(tmp_path: Path) -> None:
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "herald_tools"
    site.mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    with pytest.raises(NoSourceCheckout, match="the local stack needs a Herald source checkout"):
        find_repo_root({}, cwd=tmp_path / "cwd", here=site / "stack.py")
