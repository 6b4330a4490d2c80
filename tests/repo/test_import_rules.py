"""Services talk only over Kafka: no service imports another (what they share lives in shared/).

And the layers: shared/ is the library every service imports, so it imports no service and none
of the operator and developer tooling (herald_tools/: the ``herald`` command, the local stack,
benchmarks, doc generators), which may import anything; no service imports the tooling.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (REPO / "services").iterdir() if (p / "__init__.py").exists())


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_no_service_imports_another() -> None:
    problems = []
    for service in SERVICES:
        for path in (REPO / "services" / service).rglob("*.py"):
            for module in imported_modules(path):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != service:
                    problems.append(f"{path.relative_to(REPO)} imports {module}")
    assert not problems, "\n".join(problems)


def _imports_of(tree: str, forbidden: tuple[str, ...]) -> list[str]:
    problems = []
    for path in sorted((REPO / tree).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if module.split(".")[0] in forbidden:
                problems.append(f"{path.relative_to(REPO)} imports {module}")
    return problems


def test_shared_imports_no_service_and_no_tooling() -> None:
    problems = _imports_of("shared", ("services", "herald_tools"))
    assert not problems, "\n".join(problems)


def test_no_service_imports_the_tooling() -> None:
    problems = _imports_of("services", ("herald_tools",))
    assert not problems, "\n".join(problems)


def test_the_tooling_is_a_package_of_its_own_installed_with_herald() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert (REPO / "herald_tools" / "__init__.py").is_file()
    assert not list((REPO / "shared").glob("devtools/*.py")) and not (REPO / "shared" / "cli.py").exists()
    assert "herald_tools*" in project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert project["project"]["scripts"]["herald"] == "herald_tools.cli:main"
