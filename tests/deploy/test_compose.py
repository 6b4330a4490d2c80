"""docker-compose.yml, the Dockerfile, the Prometheus configs and the Grafana dashboard,
checked against the code.

Docker cannot run on Herald's CI machine, so none of these files is ever started there. These
tests are what keeps them honest: every command names a module that exists, every HERALD_*
variable is a real setting of the service it is given to and its value validates, the services
agree with each other (ports, URLs, tokens, receipt secrets), Prometheus scrapes every service
where it listens, and every metric and label the dashboard queries is one the code exports.
Pure Python: no Docker, no Kafka, no PostgreSQL.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import pkgutil
import random
import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase
from pydantic import AliasChoices, AliasPath
from pydantic_settings import BaseSettings, EnvSettingsSource

import services
from herald_tools.stack import SERVICES, Ports
from services.dispatcher.settings import DispatcherSettings
from services.ingest.settings import IngestSettings
from services.reports.settings import ReportsSettings
from services.scheduler.settings import SchedulerSettings
from services.simulator.settings import SimulatorSettings, is_loopback
from shared.db import MIGRATION_PACKAGES
from shared.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
PROMETHEUS = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS_LOCAL = REPO / "deploy" / "prometheus" / "prometheus-local.yml"
GRAFANA = REPO / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "herald.yml"
DASHBOARD = GRAFANA / "dashboards" / "herald.json"

#: Compose service -> the settings class its process builds from the environment.
SETTINGS: dict[str, type[BaseSettings]] = {
    "migrate": ServiceSettings,  # `herald migrate` (herald_tools/cli.py) reads ServiceSettings()
    "ingest": IngestSettings,
    "scheduler": SchedulerSettings,
    "dispatcher": DispatcherSettings,
    "reports": ReportsSettings,
    "simulator": SimulatorSettings,
}
CONSUMERS = tuple(SERVICES)  # ingest, scheduler, dispatcher, reports: ops on HERALD_OPS_PORT (APIs: ingest, reports)
SCRAPED = (*CONSUMERS, "simulator")
#: Series Prometheus makes itself for every target; not exported by Herald's code.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
TARGET_LABELS = {"job", "instance"}


# --------------------------------------------------------------------------------------------
# Loading


_INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?])([^}]*)\}")
#: The only variables a user must set before `docker compose up` (``${VAR:?why}``): secrets,
#: which no published file may default. The values stand for what a user generates.
REQUIRED_SECRETS = {"HERALD_SIM_RECEIPT_SECRET": secrets.token_urlsafe(24), "HERALD_ERASURE_KEY": secrets.token_urlsafe(32)}


def _substitute(m: re.Match[str]) -> str:
    if m.group(0) == "$$":
        return "$"
    name, op, rest = m.groups()
    if op.endswith("?"):
        assert name in REQUIRED_SECRETS, f"${{{name}:?}}: only secrets may be required, not {name}"
        return REQUIRED_SECRETS[name]
    return rest


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the default, as a user who overrides nothing but the
    required secrets gets."""
    out = _INTERPOLATION.sub(_substitute, value)
    assert "$" not in out.replace("$$", ""), (
        f"{value!r}: only ${{VAR:-default}} (and ${{SECRET:?why}}) is used in docker-compose.yml"
    )
    return out


def _interpolate_tree(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [_interpolate_tree(x) for x in node]
    if isinstance(node, dict):
        return {k: _interpolate_tree(v) for k, v in node.items()}
    return node


def load_compose() -> dict[str, Any]:
    return _interpolate_tree(yaml.safe_load(COMPOSE_FILE.read_text()))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services_(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", ...]
        env = dict(item.split("=", 1) for item in env)
    for name, value in env.items():
        assert isinstance(value, str), f"{name}: give environment values as quoted strings, got {value!r}"
    return dict(env)


def herald_services(services: dict[str, dict[str, Any]]) -> set[str]:
    """The compose services that run the Herald image (built from the Dockerfile)."""
    return {name for name, svc in services.items() if "build" in svc}


# --------------------------------------------------------------------------------------------
# Settings: environment variable names derived from the pydantic-settings model


def env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Every environment variable ``cls`` reads (upper-case) -> the field it sets.

    ``env_prefix`` + field name, unless the field has an alias: then the alias names are the
    variables, without the prefix (pydantic-settings' rule).
    """
    prefix = cls.model_config.get("env_prefix", "")
    names: dict[str, str] = {}
    for field, info in cls.model_fields.items():
        alias = info.validation_alias or info.alias
        if alias is None:
            candidates = [prefix + field]
        elif isinstance(alias, str):
            candidates = [alias]
        elif isinstance(alias, AliasChoices):
            candidates = [c if isinstance(c, str) else str(c.path[0]) for c in alias.choices]
        elif isinstance(alias, AliasPath):
            candidates = [str(alias.path[0])]
        else:  # pragma: no cover - a new kind of alias: teach this function
            raise AssertionError(f"{cls.__name__}.{field}: unknown alias {alias!r}")
        for candidate in candidates:
            names[candidate.upper()] = field
    return names


def reads(cls: type[BaseSettings], name: str) -> bool:
    """Whether ``name`` is a variable of ``cls`` (nested ``NAME__KEY`` when the class nests)."""
    names = env_names(cls)
    if name.upper() in names:
        return True
    delimiter = cls.model_config.get("env_nested_delimiter")
    return bool(delimiter) and name.upper().split(delimiter, 1)[0] in names


def clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget every variable a Herald settings class could read (a test session sets some)."""
    known = set().union(*(env_names(cls) for cls in SETTINGS.values()))
    for name in list(os.environ):
        if name.upper().startswith("HERALD_") or name.upper() in known:
            monkeypatch.delenv(name)


def build_settings(name: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The settings object service ``name`` builds at start-up from its compose environment."""
    clear_settings_env(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return SETTINGS[name]()


@pytest.fixture()
def built(services_: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every Herald service's settings, as built from docker-compose.yml."""
    out: dict[str, Any] = {}
    for name in SETTINGS:
        with monkeypatch.context() as mp:
            out[name] = build_settings(name, environment(services_[name]), mp)
    return out


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "//" in url else f"//{url}")
    assert parts.hostname and parts.port, f"{url!r} needs a host and a port"
    return parts.hostname, parts.port


# --------------------------------------------------------------------------------------------
# (a) commands


def test_every_herald_service_has_a_settings_class(services_: dict[str, dict[str, Any]]) -> None:
    assert herald_services(services_) == set(SETTINGS), "map each service of the Herald image in SETTINGS"
    assert set(SCRAPED) <= set(services_)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_command_names_an_importable_module(services_: dict[str, dict[str, Any]], name: str) -> None:
    command = services_[name].get("command")
    assert isinstance(command, list) and command[:2] == ["python", "-m"] and len(command) >= 3, command
    module = command[2]
    assert module.startswith("services.") or module == "herald_tools.cli", module
    if module.startswith("services."):
        assert module == f"services.{name}", f"compose service {name} runs {module}"
        assert len(command) == 3
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module}"
    if spec.submodule_search_locations is not None:  # a package: `python -m` runs its __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"


def test_migrate_runs_the_herald_migrate_command(services_: dict[str, dict[str, Any]]) -> None:
    from herald_tools.cli import main

    args = services_["migrate"]["command"][3:]
    assert args[:1] == ["migrate"]
    with pytest.raises(SystemExit) as exit_:  # argparse accepts the arguments, then prints help
        main([*args, "--help"])
    assert exit_.value.code == 0, f"`herald {' '.join(args)}` is not a valid command line"


def test_startup_order(services_: dict[str, dict[str, Any]]) -> None:
    def conditions(name: str) -> dict[str, str]:
        deps = services_[name].get("depends_on") or {}
        if isinstance(deps, list):
            return {d: "service_started" for d in deps}
        return {d: (v or {}).get("condition", "service_started") for d, v in deps.items()}

    assert conditions("migrate") == {"kafka": "service_healthy", "postgres": "service_healthy"}
    assert services_["migrate"].get("restart") == "no", "migrate is one-shot"
    for name in CONSUMERS:
        assert conditions(name).get("migrate") == "service_completed_successfully", name
    for name in services_:
        for dep, condition in conditions(name).items():
            assert dep in services_, f"{name} depends on unknown service {dep}"
            if condition == "service_healthy":
                assert "healthcheck" in services_[dep], f"{name} waits for {dep} to be healthy: it has no healthcheck"


# --------------------------------------------------------------------------------------------
# (b), (c) environment variables: real settings, valid values


def test_env_names_agree_with_pydantic_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """env_names() derives what pydantic-settings itself reads, for every field of every class."""
    for cls in SETTINGS.values():
        assert env_names(cls), cls
        for name, field in env_names(cls).items():
            clear_settings_env(monkeypatch)
            monkeypatch.setenv(name, "1")  # valid JSON too, for list/dict fields
            assert EnvSettingsSource(cls)(), f"{cls.__name__} does not read {name} ({field})"
        clear_settings_env(monkeypatch)
        monkeypatch.setenv(f"{cls.model_config.get('env_prefix', '')}NO_SUCH_SETTING", "1")
        assert not EnvSettingsSource(cls)()


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_variable_is_a_real_setting(services_: dict[str, dict[str, Any]], name: str) -> None:
    cls = SETTINGS[name]
    env = environment(services_[name])
    assert env, f"{name} sets no environment"
    unknown = sorted(var for var in env if not reads(cls, var))
    assert not unknown, f"{name}: {unknown} are not settings of {cls.__module__}.{cls.__name__}"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_every_value_validates(
    services_: dict[str, dict[str, Any]], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = environment(services_[name])
    settings = build_settings(name, env, monkeypatch)  # a bad value raises ValidationError here
    # and each variable reached its field (not shadowed by another alias or lost to a typo)
    dumped = settings.model_dump(mode="json")
    names = env_names(SETTINGS[name])
    for var, raw in env.items():
        field = names[var.upper()]
        value = getattr(settings, field)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, (str, int, float, bool)):
            assert str(value).lower() == raw.lower() or float_eq(value, raw), f"{name}: {var}={raw!r} gave {value!r}"
        else:
            assert dumped[field] is not None, f"{name}: {var} gave nothing"


def float_eq(value: Any, raw: str) -> bool:
    try:
        return float(value) == float(raw)
    except (TypeError, ValueError):
        return False


def test_services_listen_on_all_interfaces_on_their_ports(
    services_: dict[str, dict[str, Any]], built: dict[str, Any]
) -> None:
    for name in CONSUMERS:
        settings = built[name]
        assert settings.http_host == "0.0.0.0", f"{name} must listen on 0.0.0.0 inside its container"
        assert healthcheck_port(services_[name]) == settings.ops_port, name
        for published in services_[name].get("ports", []):
            # only APIs are published; the ops port (metrics of every tenant) stays on the compose network
            assert int(str(published).rsplit(":", 1)[1]) == settings.http_port != settings.ops_port, f"{name}: {published}"
    assert [bool(services_[name].get("ports")) for name in CONSUMERS] == [name in ("ingest", "reports") for name in CONSUMERS]
    sim = built["simulator"]
    assert sim.host == "0.0.0.0"
    assert is_loopback(sim.control_host)  # the simulator refuses anything else
    assert healthcheck_port(services_["simulator"]) in {sim.port, sim.control_port}
    assert "ports" not in services_["simulator"], "the control port has no auth: keep the simulator internal"
    published = {str(p).rsplit(":", 1)[1] for svc in services_.values() for p in svc.get("ports", [])}
    assert {"28080", "28083", "9090", "3000"} <= published


def healthcheck_port(service: dict[str, Any]) -> int:
    test = " ".join(service["healthcheck"]["test"])
    found = re.search(r"https?://127\.0\.0\.1:(\d+)/healthz", test)
    assert found, f"healthcheck should GET /healthz on 127.0.0.1: {test}"
    return int(found.group(1))


def test_services_share_kafka_database_and_topics(services_: dict[str, dict[str, Any]], built: dict[str, Any]) -> None:
    herald = [built[name] for name in SETTINGS if name != "simulator"]
    assert len({s.kafka_bootstrap for s in herald}) == 1
    assert len({s.database_url.get_secret_value() for s in herald}) == 1
    assert len({s.topic_prefix for s in herald}) == 1

    kafka = environment(services_["kafka"])
    advertised = dict(item.split("://", 1)[::-1] for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert herald[0].kafka_bootstrap in advertised, "HERALD_KAFKA_BOOTSTRAP must be an advertised listener"
    assert advertised[herald[0].kafka_bootstrap] == herald[0].kafka_security_protocol
    assert host_port(herald[0].kafka_bootstrap)[0] == "kafka"
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{kafka['KAFKA_NODE_ID']}@kafka:")
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false", "topics come from `herald migrate`"
    for key in ("OFFSETS_TOPIC_REPLICATION_FACTOR", "TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert kafka[f"KAFKA_{key}"] == "1", key
    assert built["migrate"].topic_replication == 1, "one broker: replication factor 1"

    pg = environment(services_["postgres"])
    dsn = urlsplit(herald[0].database_url.get_secret_value())
    assert (dsn.hostname, dsn.port or 5432) == ("postgres", 5432)
    assert dsn.username == pg["POSTGRES_USER"] and dsn.password == pg["POSTGRES_PASSWORD"]
    assert dsn.path.lstrip("/") == pg["POSTGRES_DB"]


def test_dispatcher_simulator_and_ingest_agree(built: dict[str, Any]) -> None:
    sim, dispatcher, ingest = built["simulator"], built["dispatcher"], built["ingest"]
    assert dispatcher.gateways, "HERALD_GATEWAYS"
    for gateway in dispatcher.gateways:
        assert host_port(gateway.url) == ("simulator", sim.port), f"gateway {gateway.name}: {gateway.url}"
        assert gateway.api_token.get_secret_value() == sim.api_token.get_secret_value(), gateway.name

    receipt = urlsplit(sim.receipt_url)
    assert host_port(sim.receipt_url) == ("ingest", ingest.http_port)
    found = re.fullmatch(r"/v1/receipts/([^/]+)", receipt.path)
    assert found, f"receipts go to ingest's /v1/receipts/{{gateway}}, not {receipt.path}"
    gateway = found.group(1)
    assert gateway in {g.name for g in dispatcher.gateways}, "receipts name a gateway the dispatcher uses"
    assert gateway in ingest.receipt_secrets, f"HERALD_RECEIPT_SECRETS has no secret for {gateway}"
    assert ingest.receipt_secrets[gateway].get_secret_value() == sim.receipt_secret.get_secret_value()


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_one_image_non_root_installed_package() -> None:
    lines = [ln.strip() for ln in DOCKERFILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    assert froms and all(image == "python:3.11-slim" for image in froms), froms
    users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image must run as a non-root user"
    assert any("pip install" in ln for ln in lines)
    assert not any(ln.upper().startswith(("CMD", "ENTRYPOINT")) for ln in lines), "each service sets its command"


def _dockerignore_excluded(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics (the last matching pattern wins; a pattern also covers subpaths)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(f"{regex}(?:/.*)?", path):
            excluded = not negate
    return excluded


def test_the_package_ships_every_owners_migrations() -> None:
    """The image installs Herald with pip (Dockerfile): each package's migrations/*.sql must be
    package data, or `herald migrate` in the image misses that owner's tables."""
    import tomllib

    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folders = {p.parent.parent for p in REPO.glob("*/**/migrations/*.sql") if ".venv" not in p.parts}
    assert {str(f.relative_to(REPO)).replace("/", ".") for f in folders} == set(MIGRATION_PACKAGES)
    for package in MIGRATION_PACKAGES:
        assert "migrations/*.sql" in package_data.get(package, []), f"pyproject.toml package-data: {package}"


def test_dockerignore_keeps_the_package_and_drops_the_rest() -> None:
    patterns = [
        ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")
    ]
    needed = ["pyproject.toml", "README.md"] + [
        str(p.relative_to(REPO))
        for top in ("shared", "services", "herald_tools")
        for p in (REPO / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    for package in MIGRATION_PACKAGES:  # every owner's migrations (herald migrate runs them all)
        assert package.replace(".", "/") + "/migrations/" in " ".join(needed), package
    missing = [p for p in needed if _dockerignore_excluded(p, patterns)]
    assert not missing, f".dockerignore leaves out {missing[:10]}"
    for path in (".venv/bin/python", ".git/HEAD", ".herald/x", "tests/conftest.py", "shared/__pycache__/x.pyc"):
        assert _dockerignore_excluded(path, patterns), path


# --------------------------------------------------------------------------------------------
# (d) Prometheus


def scrape_targets(path: Path) -> dict[str, list[str]]:
    config = yaml.safe_load(path.read_text())
    jobs: dict[str, list[str]] = {}
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        jobs[job["job_name"]] = [t for sc in job["static_configs"] for t in sc["targets"]]
    return jobs


def test_prometheus_in_compose_scrapes_every_service(services_: dict[str, dict[str, Any]], built: dict[str, Any]) -> None:
    jobs = scrape_targets(PROMETHEUS)
    assert set(jobs) == set(SCRAPED)
    for name in CONSUMERS:
        assert jobs[name] == [f"{name}:{built[name].ops_port}"], name
    # the simulator's control port is loopback-only in its container: its API port serves /metrics too
    assert jobs["simulator"] == [f"simulator:{built['simulator'].port}"]
    mounts = services_["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_prometheus_local_scrapes_the_local_stack() -> None:
    jobs = scrape_targets(PROMETHEUS_LOCAL)
    ports = Ports()
    assert set(jobs) == set(SCRAPED)
    for name in CONSUMERS:
        assert jobs[name] == [f"127.0.0.1:{ports.ops(name)}"], name
    # the control port serves /metrics and stays open in "refuse" mode
    assert jobs["simulator"] == [f"127.0.0.1:{ports.simulator_control}"]


# --------------------------------------------------------------------------------------------
# Grafana


def test_grafana_provisioning_matches_compose(services_: dict[str, dict[str, Any]]) -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(datasources) == 1 and datasources[0]["type"] == "prometheus"
    assert host_port(datasources[0]["url"]) == ("prometheus", 9090)
    assert "prometheus" in services_

    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services_["grafana"]["volumes"])
    for source in mounts:
        assert (REPO / source).exists(), source
    assert mounts["./deploy/grafana/provisioning/datasources"] == "/etc/grafana/provisioning/datasources"
    assert mounts["./deploy/grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == [mounts["./deploy/grafana/dashboards"]]

    uid = datasources[0]["uid"]
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
    home = environment(services_["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    assert home == f"{mounts['./deploy/grafana/dashboards']}/{DASHBOARD.name}"


# --------------------------------------------------------------------------------------------
# (e) dashboard metrics exist


SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def _add_family(out: dict[str, set[str]], family: Any, labels: set[str]) -> None:
    for suffix in SUFFIXES[family.type]:
        out.setdefault(family.name + suffix, set()).update(labels | ({"le"} if suffix == "_bucket" else set()))


def exported_metrics() -> dict[str, set[str]]:
    """Every series name the code exposes -> its label names."""
    importlib.import_module("shared.metrics")
    for module in pkgutil.iter_modules(services.__path__):
        if importlib.util.find_spec(f"services.{module.name}.metrics") is not None:
            importlib.import_module(f"services.{module.name}.metrics")
    labels: dict[str, set[str]] = {}
    for name, obj in _metric_objects():
        labels[name] = set(getattr(obj, "_labelnames", ()))
    out: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        _add_family(out, family, labels.get(family.name, {lbl for s in family.samples for lbl in s.labels}))
    for family in simulator_registry().collect():  # the simulator's own collector (services/simulator/http.py)
        _add_family(out, family, {lbl for s in family.samples for lbl in s.labels})
    return out


def _metric_objects() -> list[tuple[str, MetricWrapperBase]]:
    import sys

    found = []
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not (mod_name == "shared.metrics" or re.fullmatch(r"services\.\w+\.metrics", mod_name)):
            continue
        for obj in vars(mod).values():
            if isinstance(obj, MetricWrapperBase):
                found.append((obj._name, obj))
    return found


def simulator_registry() -> CollectorRegistry:
    from services.simulator.core import OutcomeRates, Simulator
    from services.simulator.http import build_registry

    sim = Simulator(rates=OutcomeRates(0.9, 0.07, 0.03), receipt_delay_ms=(0, 0), rng=random.Random(0))
    sim.count_rejection("unauthorized")  # so that labelled families have a sample to show their labels

    class Listening:
        listening = True

        async def pause(self) -> None: ...

        async def resume(self) -> None: ...

    return build_registry(sim, Listening())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


_PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
    "offset", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")


def parse_promql(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """(metric selectors with the labels they match on, labels in by/without/on clauses)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, [$__rate_interval] included
    grouping = {lbl.strip() for _, inner in _GROUPING.findall(text) for lbl in inner.split(",") if lbl.strip()}
    text = _GROUPING.sub(" ", text)
    selectors = []
    for m in _SELECTOR.finditer(text):
        name, matchers, call = m.groups()
        if call or name.lower() in _PROMQL_WORDS:
            continue  # a function or aggregation (its parenthesis follows), or a keyword
        selectors.append((name, set(_MATCHER.findall(matchers or ""))))
    return selectors, grouping


def test_promql_parser_sees_metrics_functions_and_labels() -> None:
    selectors, grouping = parse_promql(
        'histogram_quantile(0.99, sum by (le, type) (rate(a_bucket{status=~"x|y", gateway!="z"}[$__rate_interval])))'
        " / on (type) group_left sum(b_total) * 1e-9 > bool 0.5"
    )
    assert selectors == [("a_bucket", {"status", "gateway"}), ("b_total", set())]
    assert grouping == {"le", "type"}


def dashboard_queries() -> list[tuple[str, str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    out = [
        (panel["title"], target["expr"], target.get("legendFormat", ""))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]
    assert len(out) >= 10
    return out


def test_dashboard_uses_only_exported_metrics_and_labels() -> None:
    exported = exported_metrics()
    assert "herald_messages_final_total" in exported and "herald_sim_submissions_total" in exported
    problems = []
    for title, expr, legend in dashboard_queries():
        selectors, grouping = parse_promql(expr)
        if not selectors:
            problems.append(f"{title}: no metric found in {expr!r}")
        available = set(TARGET_LABELS)
        for name, matched in selectors:
            if name in PROMETHEUS_SYNTHETIC:
                labels = set(TARGET_LABELS)
            elif name not in exported:
                problems.append(f"{title}: {name} is not exported by the code")
                continue
            else:
                labels = exported[name] | TARGET_LABELS
            available |= labels
            if matched - labels:
                problems.append(f"{title}: {name} has no label {sorted(matched - labels)}")
        if grouping - available:
            problems.append(f"{title}: grouping by {sorted(grouping - available)}, not labels of {expr!r}")
        if "histogram_quantile" in expr:
            if "le" not in grouping or not all(n.endswith("_bucket") for n, _ in selectors):
                problems.append(f"{title}: histogram_quantile needs _bucket series aggregated by le")
        in_legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        result_labels = (grouping - {"le"}) if re.search(r"\bby\s*\(", expr) else available
        if in_legend - result_labels:
            problems.append(f"{title}: legend uses {sorted(in_legend - result_labels)}, not in the result")
    assert not problems, "\n".join(problems)


def test_dashboard_covers_the_pipeline() -> None:
    used = {name for _, expr, _ in dashboard_queries() for name, _ in parse_promql(expr)[0]}
    for metric in (
        "herald_ingest_messages_accepted_total",
        "herald_messages_final_total",
        "herald_accept_to_submit_seconds_bucket",
        "herald_submit_to_final_seconds_bucket",
        "herald_consumer_lag",
        "herald_rejected_events_total",
        "herald_dispatcher_submissions_total",
        "herald_dispatcher_throttle_wait_seconds_bucket",
        "herald_ingest_messages_rejected_total",
    ):
        assert metric in used, metric
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
