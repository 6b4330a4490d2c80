"""`herald admin`: clear argument errors before any database work, and help on every subcommand."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from shared.auth import SCOPES

HERALD = [sys.executable, "-c", "import sys; from herald_tools.cli import main; sys.exit(main())"]
# An address where nothing listens: an argument error must be reported before any connection.
NO_DB = {"HERALD_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "PATH": "/usr/bin:/bin"}


def herald(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HERALD, *args], capture_output=True, text=True, timeout=60, env=NO_DB)


@pytest.mark.parametrize("command", [["key", "create", "acme"], ["tenant", "create", "acme"]])
def test_unknown_scope_is_a_clear_error_listing_the_valid_ones(command: list[str]) -> None:
    result = herald("admin", *command, "--scopes", "messages:write,bogus:scope")
    assert result.returncode == 2, result.stderr
    assert "unknown scope(s): bogus:scope" in result.stderr
    for scope in SCOPES:
        assert scope in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", [[], ["tenant"], ["key"], ["suppressions"], ["numbers"], ["gateways"], ["link"]])
def test_every_admin_subcommand_has_help(path: list[str]) -> None:
    result = herald("admin", *path, "--help")
    assert result.returncode == 0, result.stderr
    listing = result.stdout.split("positional arguments:", 1)[1].split("options:", 1)[0]
    choices = re.search(r"^  \{([^}]*)\}", listing, re.M)
    assert choices, result.stdout
    helped = {line.split()[0] for line in listing.splitlines() if re.match(r"^    \S+\s+\S", line)}
    missing = [c for c in choices.group(1).split(",") if c not in helped]
    assert not missing, f"`herald admin {' '.join(path)}`: no help for {missing}:\n{result.stdout}"


@pytest.mark.parametrize("args, message", [
    (["link", "takedown", "phish"], "give a link code"),
    (["link", "takedown", "example.com/x"], "give a link code"),
    (["link", "restore", "https://"], "give a link code"),
    (["link", "takedown", "AbCdEfGhIj", "--tenant", "bad tenant!"], "tenant id must match"),
    (["tenant", "policy", "acme", "--link-domain", "https://go.acme.example"], "a link domain is a host name"),
    (["tenant", "policy", "acme", "--link-ttl", "1w"], "a duration is a number with m, h or d"),
    (["tenant", "policy", "acme", "--link-ttl", "0m"], "between 1 minute and 3650 days"),
])
def test_link_arguments_are_checked_before_any_database_work(args: list[str], message: str) -> None:
    result = herald("admin", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
