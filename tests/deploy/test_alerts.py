"""deploy/prometheus/alerts.yml, checked against the code, promtool and the runbook.

(1) Every metric an alert (or its promtool unit test) uses is one the code exports, with the
    labels it matches and groups on: the same derivation from prometheus_client's registry
    as the dashboard test (tests/deploy/test_compose.py). Pure Python.
(2) ``promtool check rules``, ``promtool test rules`` (alerts_test.yml) and ``promtool check
    config`` on both Prometheus configs. promtool comes from deploy/local/promtool.sh: PATH, or
    a cached copy of Debian's ``prometheus`` package (apt-get download + dpkg-deb -x). When it
    cannot be had, these tests FAIL: the rules are not proven to load otherwise.
(3) Every alert has a runbook entry of its own name in docs/operations.md ("Alerts and
    runbook"), and its ``annotations.runbook`` points at it.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from tests.deploy.test_compose import (
    PROMETHEUS,
    PROMETHEUS_LOCAL,
    PROMETHEUS_SYNTHETIC,
    REPO,
    TARGET_LABELS,
    _add_family,
    exported_metrics,
    parse_promql,
)

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = REPO / "deploy" / "prometheus" / "alerts_test.yml"
OPERATIONS = REPO / "docs" / "operations.md"
PROMTOOL_SH = REPO / "deploy" / "local" / "promtool.sh"
RUNBOOK_SECTION = "## Alerts and runbook"
SEVERITIES = {"page", "warning"}
#: What the rules must watch (issue 6 part 7, issue 9 part 7, docs/operations.md).
REQUIRED_METRICS = {
    "herald_messages_final_total",  # delivery rate drop
    "herald_consumer_lag",  # lag high / growing
    "herald_dispatcher_gateway_open",  # gateway down
    "herald_webhooks_dead_letters_total",
    "herald_rejected_events_total",
    "herald_consumer_handler_errors_total",
    "herald_scheduler_release_lateness_seconds_bucket",
    "herald_dispatcher_submissions_total",  # retries exhausted / outcome unknown
    "up",
}


# --------------------------------------------------------------------------------------------
# Loading


@cache
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    out = [rule for group in doc["groups"] for rule in group["rules"]]
    assert out, f"{ALERTS}: no rules"
    return out


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


@cache
def metrics() -> dict[str, set[str]]:
    """exported_metrics() plus the SMPP gateway's metrics (defined in its own module)."""
    from services.dispatcher.gateways import smpp

    out = {name: set(labels) for name, labels in exported_metrics().items()}
    for obj in vars(smpp).values():
        if isinstance(obj, MetricWrapperBase):
            for family in obj.collect():
                _add_family(out, family, set(obj._labelnames))
    return out


def labels_of(name: str) -> set[str] | None:
    if name in PROMETHEUS_SYNTHETIC:
        return set(TARGET_LABELS)
    exported = metrics().get(name)
    return None if exported is None else exported | TARGET_LABELS


def expr_problems(where: str, expr: str) -> list[str]:
    """Unknown metrics or labels in one PromQL expression."""
    selectors, grouping = parse_promql(expr)
    if not selectors:
        return [f"{where}: no metric found in {expr!r}"]
    problems = []
    for name, matched in selectors:
        labels = labels_of(name)
        if labels is None:
            problems.append(f"{where}: {name} is not exported by the code")
            continue
        if matched - labels:
            problems.append(f"{where}: {name} has no label {sorted(matched - labels)}")
        # Every aggregation in these rules groups series of the same metric family (or of
        # families with the same labels): each grouping label must be on each selector.
        if grouping - labels:
            problems.append(f"{where}: grouping by {sorted(grouping - labels)}, not labels of {name}")
    if "histogram_quantile" in expr and ("le" not in grouping or not all(n.endswith("_bucket") for n, _ in selectors)):
        problems.append(f"{where}: histogram_quantile needs _bucket series aggregated by le")
    return problems


def result_labels(expr: str) -> set[str]:
    """Labels an alert built from ``expr`` can carry (upper bound)."""
    selectors, grouping = parse_promql(expr)
    if re.search(r"\b(sum|max|min|avg|count)\s+by\s*\(", expr) or "histogram_quantile" in expr:
        return grouping - {"le"}
    return set().union(*(labels_of(n) or set() for n, _ in selectors))


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_entries() -> dict[str, str]:
    """'### Name' entry -> its text, in docs/operations.md's "Alerts and runbook" section."""
    text = OPERATIONS.read_text()
    assert RUNBOOK_SECTION in text, f"{OPERATIONS}: no {RUNBOOK_SECTION!r} section"
    section = text.split(RUNBOOK_SECTION + "\n", 1)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.MULTILINE)[0]
    parts = re.split(r"^### +(.+?) *$", section, flags=re.MULTILINE)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


# --------------------------------------------------------------------------------------------
# (1) metrics and labels exist


def test_rules_are_well_formed() -> None:
    names = [rule.get("alert") for rule in rules()]
    assert all(names), "alerts.yml holds alerting rules only (recording rules: add a check here)"
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    for rule in alerts():
        assert re.fullmatch(r"Herald[A-Z]\w+", rule["alert"]), rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{rule['alert']}: severity one of {SEVERITIES}"
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook"} <= set(annotations), f"{rule['alert']}: annotations"


def test_alerts_use_only_exported_metrics_and_labels() -> None:
    assert "herald_dispatcher_gateway_open" in metrics() and "herald_smpp_binds" in metrics()
    problems = []
    for rule in alerts():
        name, expr = rule["alert"], rule["expr"]
        problems += expr_problems(name, expr)
        templated = " ".join(str(v) for v in (*rule.get("labels", {}).values(), *rule.get("annotations", {}).values()))
        used = set(re.findall(r"\$labels\.(\w+)", templated))
        if used - result_labels(expr):
            problems.append(f"{name}: templates use {sorted(used - result_labels(expr))}, not labels of the result")
    assert not problems, "\n".join(problems)


def test_alerts_cover_what_operations_watch() -> None:
    used = {n for rule in alerts() for n, _ in parse_promql(rule["expr"])[0]}
    assert REQUIRED_METRICS <= used, f"no alert on {sorted(REQUIRED_METRICS - used)}"


def test_alert_unit_tests_feed_exported_series_and_cover_every_alert() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert [(ALERTS_TEST.parent / f).resolve() for f in doc["rule_files"]] == [ALERTS.resolve()]
    problems, firing, quiet = [], set(), set()
    for i, case in enumerate(doc["tests"]):
        for series in case.get("input_series", []):
            problems += expr_problems(f"alerts_test.yml test {i}", series["series"])
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    if names - firing:
        problems.append(f"alerts_test.yml never shows these firing: {sorted(names - firing)}")
    if names - quiet:
        problems.append(f"alerts_test.yml never shows these quiet: {sorted(names - quiet)}")
    if (firing | quiet) - names:
        problems.append(f"alerts_test.yml tests unknown alerts: {sorted((firing | quiet) - names)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("config", [PROMETHEUS, PROMETHEUS_LOCAL], ids=lambda p: p.name)
def test_prometheus_configs_load_the_alert_rules(config: Path) -> None:
    files = yaml.safe_load(config.read_text()).get("rule_files") or []
    resolved = [(config.parent / f).resolve() for f in files]
    assert ALERTS.resolve() in resolved, f"{config.name}: rule_files must name alerts.yml (relative to the config)"
    assert all(p.is_file() for p in resolved), f"{config.name}: rule_files {files} do not all exist"


# --------------------------------------------------------------------------------------------
# (2) promtool


@pytest.fixture(scope="module")
def promtool() -> str:
    """promtool's path; fetched into the cache by deploy/local/promtool.sh on first use."""
    try:
        found = subprocess.run(
            ["sh", str(PROMTOOL_SH), "--path"], capture_output=True, text=True, timeout=240, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail("deploy/local/promtool.sh --path timed out fetching promtool (apt unreachable?)")
    if found.returncode != 0:
        pytest.fail(
            "cannot get promtool: it is not on PATH, not cached, and deploy/local/promtool.sh could not "
            "fetch Debian's prometheus package (needs apt access, or set PROMTOOL=/path/to/promtool):\n"
            + found.stderr
        )
    return found.stdout.strip()


def run_promtool(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_promtool_check_rules(promtool: str) -> None:
    out = run_promtool(promtool, "check", "rules", str(ALERTS.relative_to(REPO)))
    assert f"SUCCESS: {len(rules())} rules found" in out, out


def test_promtool_test_rules(promtool: str) -> None:
    run_promtool(promtool, "test", "rules", str(ALERTS_TEST.relative_to(REPO)))


@pytest.mark.parametrize("config", [PROMETHEUS, PROMETHEUS_LOCAL], ids=lambda p: p.name)
def test_promtool_check_config(promtool: str, config: Path) -> None:
    out = run_promtool(promtool, "check", "config", str(config.relative_to(REPO)))
    assert "SUCCESS: 1 rule files found" in out, out
    assert f"SUCCESS: {len(rules())} rules found" in out, out


# --------------------------------------------------------------------------------------------
# (3) runbook


def test_every_alert_has_a_runbook_entry_and_points_at_it() -> None:
    entries = runbook_entries()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ +(.+?) *$", OPERATIONS.read_text(), flags=re.MULTILINE)}
    names = [rule["alert"] for rule in alerts()]
    problems = []
    if set(names) - set(entries):
        problems.append(f"docs/operations.md: no runbook entry (### Name) for {sorted(set(names) - set(entries))}")
    if set(entries) - set(names):
        problems.append(f"docs/operations.md: runbook entries without an alert: {sorted(set(entries) - set(names))}")
    for rule in alerts():
        name = rule["alert"]
        expected = f"docs/operations.md#{github_anchor(name)}"
        if rule["annotations"].get("runbook") != expected:
            problems.append(f"{name}: annotations.runbook should be {expected!r}")
        if github_anchor(name) not in anchors:
            problems.append(f"{name}: docs/operations.md has no heading with anchor #{github_anchor(name)}")
        body = entries.get(name, "")
        watched = {re.sub(r"_(bucket|sum|count)$", "", n) for n, _ in parse_promql(rule["expr"])[0]}
        if body and not any(f"`{m}" in body for m in watched):
            problems.append(f"{name}: its runbook entry names none of the metrics it watches {sorted(watched)}")
        if body and rule["labels"]["severity"] not in body.split("\n", 1)[0]:
            problems.append(f"{name}: the runbook entry's first line should give its severity")
    assert not problems, "\n".join(problems)
