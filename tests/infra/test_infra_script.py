"""Tests of deploy/local/infra.py, the local Kafka + PostgreSQL script.

The fast tests check the hand-encoded Kafka protocol and the error messages.
The integration tests start real servers on their own ports (19192/19193/15532
and 19292/19293/15632, or free ports from the kernel when someone else uses
those) and in their own state dirs under /var/tmp, so they never touch the
default instance (19092/19093/15432, <repo>/.herald).
They need java, PostgreSQL 15 binaries and the cached Kafka jars (or mvn).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from herald_tools.stack import ephemeral_range, free_port

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "infra.py"

TEST_PORTS = {
    "HERALD_KAFKA_PORT": "19192",
    "HERALD_KAFKA_CONTROLLER_PORT": "19193",
    "HERALD_PG_PORT": "15532",
}
FALLBACK_PORTS = {
    "HERALD_KAFKA_PORT": "19292",
    "HERALD_KAFKA_CONTROLLER_PORT": "19293",
    "HERALD_PG_PORT": "15632",
}


def _load_infra():
    spec = importlib.util.spec_from_file_location("herald_local_infra", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


infra = _load_infra()


def _env(state_dir: Path | str, ports: dict[str, str] = TEST_PORTS, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(ports)
    env["HERALD_STATE_DIR"] = str(state_dir)
    env.update(extra)
    return env


def run_infra(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


def _pids(status_out: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(kafka|postgres): running \(pid (\d+)", status_out, re.M)}


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports(preferred: dict[str, str]) -> dict[str, str]:
    """The preferred ports when all are free, else free ones below the ephemeral range.

    Other people on this machine may run their own instance on a test port."""
    if all(_port_is_free(int(p)) for p in preferred.values()):
        return dict(preferred)
    return {var: str(free_port()) for var in sorted(preferred)}


def _shared_state_dir(prefix: str) -> Path:
    # not pytest's tmp_path: it is 0700, and postgres must be able to traverse the dir
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o755)
    return path


# --------------------------------------------------------------------------
# fast tests


def test_api_versions_request_bytes():
    frame = infra.encode_request(18, 0, 7, b"", client_id="c")
    # size, api_key 18, version 0, correlation id 7, client id "c", empty body
    assert frame == struct.pack(">ihhih", 11, 18, 0, 7, 1) + b"c"


def test_parse_api_versions_v0():
    body = struct.pack(">hi", 0, 2) + struct.pack(">hhh", 3, 0, 13) + struct.pack(">hhh", 18, 0, 4)
    error_code, versions = infra.parse_api_versions_v0(infra._Reader(body))
    assert error_code == 0
    assert versions == {3: (0, 13), 18: (0, 4)}


def _kstr(s: str | None) -> bytes:
    if s is None:
        return struct.pack(">h", -1)
    return struct.pack(">h", len(s)) + s.encode()


def test_metadata_v8_encode_and_parse():
    assert infra.encode_metadata_body(8) == struct.pack(">ibbb", 0, 0, 0, 0)
    assert infra.encode_metadata_body(1) == struct.pack(">i", 0)
    body = (
        struct.pack(">i", 0)  # throttle
        + struct.pack(">i", 1) + struct.pack(">i", 1) + _kstr("127.0.0.1") + struct.pack(">i", 19092) + _kstr(None)
        + _kstr("clusterX")
        + struct.pack(">i", 1)  # controller id
        + struct.pack(">i", 0)  # topics
    )
    brokers, cluster_id, controller_id = infra.parse_metadata(infra._Reader(body), 8)
    assert brokers == [(1, "127.0.0.1", 19092)]
    assert cluster_id == "clusterX"
    assert controller_id == 1


def test_default_ports_lie_below_the_ephemeral_range():
    """A server's port in the kernel's ephemeral range can be taken while the server is down
    (a fault test's restart): clients retrying it get it as their own local port, or connect
    to themselves, and the server cannot listen again. The CI run that stopped and restarted
    Kafka on 39092 failed that way."""
    low, _ = ephemeral_range()
    for var, port in infra.DEFAULT_PORTS.items():
        assert port < low, f"{var} defaults to {port}, inside the ephemeral range from {low}"


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_repeated():
    low, _ = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert all(p < low for p in ports)
    assert len(set(ports)) == len(ports)
    assert all(_port_is_free(p) for p in ports)


def test_probe_of_a_closed_port_is_not_ready():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = infra.probe_kafka(port, timeout=1)
    assert not probe.ok


def test_env_prints_exports(tmp_path):
    cp = run_infra(_env(tmp_path / "state"), "env")
    assert cp.returncode == 0
    assert cp.stdout.splitlines() == [
        "export HERALD_KAFKA_BOOTSTRAP=127.0.0.1:19192",
        "export HERALD_DATABASE_URL=postgresql://postgres@127.0.0.1:15532/herald",
    ]


def test_status_without_state_is_non_zero(tmp_path):
    cp = run_infra(_env(tmp_path / "none"), "status")
    assert cp.returncode == 1
    assert "kafka: stopped" in cp.stdout and "postgres: stopped" in cp.stdout


def test_stop_without_state_is_fine(tmp_path):
    cp = run_infra(_env(tmp_path / "none"), "stop")
    assert cp.returncode == 0, cp.stderr


def test_missing_java_is_explained(tmp_path):
    env = _env(tmp_path / "state", PATH="/nonexistent")
    env.pop("JAVA_HOME", None)
    cp = run_infra(env, "start", timeout=60)
    assert cp.returncode != 0
    assert "java" in cp.stderr and "apt-get install openjdk-17-jre-headless" in cp.stderr


def test_bad_port_value(tmp_path):
    cp = run_infra(_env(tmp_path / "state", HERALD_PG_PORT="abc"), "env")
    assert cp.returncode == 1
    assert "HERALD_PG_PORT" in cp.stderr


def test_reset_refuses_a_foreign_dir(tmp_path):
    foreign = tmp_path / "not-herald"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    cp = run_infra(_env(foreign), "reset")
    assert cp.returncode != 0
    assert (foreign / "precious.txt").exists()


# --------------------------------------------------------------------------
# integration tests: real servers


@pytest.fixture(scope="module")
def own_infra():
    """A state dir and ports of this module's own (named unlike tests/conftest.py's infra_env)."""
    state = _shared_state_dir("herald-infra-test-")
    env = _env(state, _pick_ports(TEST_PORTS))
    yield env
    run_infra(env, "reset", timeout=120)
    shutil.rmtree(state, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.parametrize("var", sorted(TEST_PORTS))
def test_port_taken_is_reported(own_infra, var):
    assert run_infra(own_infra, "stop").returncode == 0
    port = int(own_infra[var])
    with socket.socket() as blocker:
        # SO_REUSEADDR: a just-stopped broker may leave TIME_WAIT connections on the port;
        # a listening socket still takes it, with or without the option
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        cp = run_infra(own_infra, "start")
    assert cp.returncode != 0, cp.stdout
    assert str(port) in cp.stderr and var in cp.stderr, cp.stderr
    assert run_infra(own_infra, "status").returncode != 0  # nothing was left running


def _wait_dead(pid: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while infra.pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived kill -9"
        time.sleep(0.1)


def _psql_select_1(env: dict[str, str]) -> str:
    psql = str(infra.find_pg_bindir() / "psql")
    cp = subprocess.run(
        [psql, "-X", "-h", "127.0.0.1", "-p", env["HERALD_PG_PORT"], "-U", "postgres", "-d", "herald",
         "-Atc", "select 1"],
        capture_output=True, text=True, timeout=30, cwd="/",
    )
    assert cp.returncode == 0, cp.stderr
    return cp.stdout.strip()


@pytest.mark.integration
def test_lifecycle_start_status_kill_recover_stop(own_infra):
    kafka_port = int(own_infra["HERALD_KAFKA_PORT"])

    cp = run_infra(own_infra, "start")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert f"kafka: ready on 127.0.0.1:{kafka_port}" in cp.stdout

    cp = run_infra(own_infra, "status")
    assert cp.returncode == 0, cp.stdout
    pids = _pids(cp.stdout)
    assert set(pids) == {"kafka", "postgres"}, cp.stdout

    assert infra.probe_kafka(kafka_port).ok
    assert _psql_select_1(own_infra) == "1"

    # a second start finds both running and changes nothing
    t0 = time.monotonic()
    cp = run_infra(own_infra, "start")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "kafka: already running" in cp.stdout and "postgres: already running" in cp.stdout
    assert time.monotonic() - t0 < 20
    assert _pids(run_infra(own_infra, "status").stdout) == pids

    # kill -9 both servers: pid files and postmaster.pid go stale
    for pid in pids.values():
        os.kill(pid, 9)
    for pid in pids.values():
        _wait_dead(pid)
    assert run_infra(own_infra, "status").returncode != 0

    cp = run_infra(own_infra, "start")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cp = run_infra(own_infra, "status")
    assert cp.returncode == 0, cp.stdout
    new_pids = _pids(cp.stdout)
    assert set(new_pids) == {"kafka", "postgres"}
    assert new_pids["kafka"] != pids["kafka"] and new_pids["postgres"] != pids["postgres"]
    assert infra.probe_kafka(kafka_port).ok
    assert _psql_select_1(own_infra) == "1"

    cp = run_infra(own_infra, "stop")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    cp = run_infra(own_infra, "status")
    assert cp.returncode != 0
    assert "kafka: stopped" in cp.stdout and "postgres: stopped" in cp.stdout
    assert run_infra(own_infra, "stop").returncode == 0  # stopping twice is fine


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres-user fallback only applies when running as root")
def test_untraversable_state_dir_falls_back_to_var_tmp():
    private = Path(tempfile.mkdtemp(prefix="herald-infra-private-", dir="/var/tmp"))  # 0700
    state = private / "state"
    env = _env(state, _pick_ports(FALLBACK_PORTS))
    try:
        cp = run_infra(env, "start")
        assert cp.returncode == 0, cp.stdout + cp.stderr
        assert "cannot traverse" in cp.stdout
        fallback = Path((state / "pg-location").read_text().strip())
        assert str(fallback).startswith("/var/tmp/herald-")
        assert (fallback / "data" / "PG_VERSION").exists()
        assert _psql_select_1(env) == "1"
        assert run_infra(env, "status").returncode == 0
    finally:
        cp = run_infra(env, "reset", timeout=120)
        shutil.rmtree(private, ignore_errors=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert not state.exists()
    assert not fallback.exists()
