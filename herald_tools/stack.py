"""Start Herald's services and the gateway simulator as separate processes.

Used by ``herald up`` (the demo), the end-to-end tests and the benchmarks. Children get
``PR_SET_PDEATHSIG`` so they die with their parent: no orphans even after a kill -9.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

INFRA = Path("deploy") / "local" / "infra.py"  # in a source checkout, from its root
SERVICES = ("ingest", "scheduler", "dispatcher", "reports")
API_SERVICES = ("ingest", "reports")  # the others serve only their ops port


class NoSourceCheckout(RuntimeError):
    """The local stack (infra.py, the services run from the source tree) needs a checkout."""


def find_repo_root(environ: Mapping[str, str] | None = None, cwd: Path | None = None, here: Path | None = None) -> Path:
    """The source checkout whose deploy/local/infra.py starts Kafka and PostgreSQL: ``HERALD_REPO_ROOT``
    if set, else the first of the current directory and its parents that has one, else the first of
    this module's directory and its parents (an editable install, or a virtualenv inside the checkout).
    NoSourceCheckout otherwise: an installed Herald without its sources cannot run the local stack."""
    environ = os.environ if environ is None else environ
    if explicit := environ.get("HERALD_REPO_ROOT"):
        root = Path(explicit).expanduser().resolve()
        if not (root / INFRA).is_file():
            raise NoSourceCheckout(f"HERALD_REPO_ROOT={explicit} has no {INFRA}: point it at a Herald source checkout")
        return root
    starts = [(cwd or Path.cwd()).resolve(), (here or Path(__file__)).resolve().parent]
    for start in starts:
        for root in (start, *start.parents):
            if (root / INFRA).is_file():
                return root
    raise NoSourceCheckout(
        f"the local stack needs a Herald source checkout (its {INFRA}); none found above "
        + " or ".join(str(s) for s in starts) + ": run from the checkout or set HERALD_REPO_ROOT"
    )


_repo_root: Path | None = None


def repo_root() -> Path:
    """:func:`find_repo_root`, looked up once per process."""
    global _repo_root
    if _repo_root is None:
        _repo_root = find_repo_root()
    return _repo_root


def __getattr__(name: str) -> Path:
    """``REPO`` (the checkout) and ``INFRA_SCRIPT``, found on first use, not at import."""
    if name == "REPO":
        return repo_root()
    if name == "INFRA_SCRIPT":
        return repo_root() / INFRA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _pinned(cpus: set[int]) -> None:
    _die_with_parent()
    os.sched_setaffinity(0, cpus)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # A child inherits its parent's blocked signals across exec: a service started by a parent
    # that had SIGTERM blocked would never get its stop signal (and be killed after the timeout).
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


_handed_out: set[int] = set()


def free_port() -> int:
    """A free port below the kernel's ephemeral range, never the same twice in one process.

    Not ``bind(0)``: that returns a port from the ephemeral range, where, while a server is
    down (a fault test's restart, a proxy not yet open), any outgoing connection may take its
    port, and a client retrying that very port can connect to itself (TCP self-connect), after
    which the server cannot listen on it again."""
    low, _ = ephemeral_range()
    top = min(low, 32768)
    bottom = 20000 if top > 22000 else 1024
    for _ in range(2000):
        port = random.randrange(bottom, top)
        if port not in _handed_out and port_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port in {bottom}-{top - 1}")


def infra(*command: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``deploy/local/infra.py COMMAND…`` (start, stop [kafka|postgres], status, env)."""
    proc = subprocess.run(
        [sys.executable, str(repo_root() / INFRA), *command], text=True, capture_output=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"infra {command} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_infra() -> subprocess.CompletedProcess[str]:
    """Start (or reuse) the local Kafka and PostgreSQL and point this process at them: the
    addresses infra.py reports (HERALD_KAFKA_BOOTSTRAP, HERALD_DATABASE_URL, which follow
    HERALD_KAFKA_PORT and HERALD_PG_PORT) fill in whatever the environment does not set."""
    started = infra("start")
    for name, value in re.findall(r"^export (\w+)=(\S+)$", infra("env").stdout, re.M):
        os.environ.setdefault(name, value)
    return started


@dataclass
class Ports:
    """API ports (ingest, reports; scheduler and dispatcher have no API and leave theirs closed),
    the services' ops ports (/healthz, /readyz, /metrics) and the simulator's two."""

    ingest: int = 28080
    scheduler: int = 28081
    dispatcher: int = 28082
    reports: int = 28083
    simulator: int = 28090
    simulator_control: int = 28091
    ingest_ops: int = 28180
    scheduler_ops: int = 28181
    dispatcher_ops: int = 28182
    reports_ops: int = 28183

    @classmethod
    def random(cls) -> Ports:
        return cls(*(free_port() for _ in range(10)))

    def of(self, name: str) -> int:
        return int(getattr(self, name))

    def ops(self, name: str) -> int:
        return int(getattr(self, f"{name}_ops"))


@dataclass
class Process:
    name: str
    instance: int
    popen: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ops_port: int | None = None  # the services' /healthz, /readyz and /metrics (None: the simulator)


@dataclass
class Stack:
    """The services and simulator of one Herald environment (one topic prefix, one database)."""

    env: dict[str, str]
    ports: Ports
    log_dir: Path
    gateway_rate: float = 2000.0
    processes: list[Process] = field(default_factory=list)
    # The simulator signs receipts with it and ingest checks them: fresh for every stack, never a published one.
    receipt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # The key of erased numbers' hashes (shared/erasure.py), for ingest and the scheduler. Fresh for
    # every stack unless HERALD_ERASURE_KEYS is given (the demo keeps one in .herald/erasure-key).
    erasure_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def base_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env.setdefault("HERALD_LOG_FORMAT", "json")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root()), env.get("PYTHONPATH", "")]))
        env["HERALD_SIM_PORT"] = str(self.ports.simulator)
        env["HERALD_SIM_CONTROL_PORT"] = str(self.ports.simulator_control)
        # the local stack's webhook receivers (demo, tests) listen on loopback over http: allowed
        # explicitly here; the defaults refuse both (docs/webhooks.md#destinations)
        env.setdefault("HERALD_WEBHOOK_ALLOWED_NETWORKS", json.dumps(["127.0.0.0/8", "::1/128"]))
        env.setdefault("HERALD_WEBHOOK_REQUIRE_HTTPS", "false")
        env.setdefault("HERALD_API_DOCS", "true")  # /docs and /openapi.json: a development stack
        env.setdefault("HERALD_SIM_SMPP_PORT", "0")  # the SMPP face only where a test or the demo asks for it
        env["HERALD_SIM_RECEIPT_URL"] = f"http://127.0.0.1:{self.ports.ingest}/v1/receipts/sim"
        env.setdefault("HERALD_SIM_RECEIPT_SECRET", self.receipt_secret)
        env.setdefault("HERALD_RECEIPT_SECRETS", json.dumps({"sim": env["HERALD_SIM_RECEIPT_SECRET"]}))
        env.setdefault("HERALD_ERASURE_KEYS", json.dumps({"k1": self.erasure_key}))
        env.setdefault(
            "HERALD_GATEWAYS",
            json.dumps(
                [
                    {
                        "name": "sim",
                        "kind": "herald-http",
                        "url": f"http://127.0.0.1:{self.ports.simulator}",
                        "api_token": env.get("HERALD_SIM_API_TOKEN", "sim-token"),
                        "rate_per_s": self.gateway_rate,
                    }
                ]
            ),
        )
        return env

    def start(self, name: str, *, port: int | None = None, ops_port: int | None = None,
              extra_env: dict[str, str] | None = None, cpus: set[int] | None = None) -> Process:
        """Start one instance of a service (or ``simulator``); ``cpus`` pins it (and every thread it
        starts) to those cores, as ``taskset -c`` would."""
        instance = sum(1 for p in self.processes if p.name == name) + 1
        port = port or (self.ports.of(name) if instance == 1 else free_port())
        env = self.base_env()
        if name != "simulator":
            ops_port = ops_port or (self.ports.ops(name) if instance == 1 else free_port())
            env["HERALD_HTTP_PORT"] = str(port)
            env["HERALD_OPS_PORT"] = str(ops_port)
        env.update(extra_env or {})
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / (f"{name}.log" if instance == 1 else f"{name}-{instance}.log")
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                [sys.executable, "-m", f"services.{name}"],
                cwd=repo_root(),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent if cpus is None else lambda: _pinned(cpus),
            )
        process = Process(name, instance, popen, port, log_path, ops_port if name != "simulator" else None)
        self.processes.append(process)
        return process

    def start_all(self) -> None:
        for port in (self.ports.simulator, self.ports.simulator_control, *(self.ports.of(s) for s in API_SERVICES),
                     *(self.ports.ops(s) for s in SERVICES)):
            if not port_free(port):
                raise RuntimeError(
                    f"port {port} is taken: is another Herald stack running? Stop it with `make stop`, "
                    "or choose other ports."
                )
        self.start("simulator")
        for name in SERVICES:
            self.start(name)

    def wait_ready(self, timeout_s: float = 90, processes: list[Process] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        for process in processes or self.processes:
            if process.ops_port is None:  # the simulator
                url = f"http://127.0.0.1:{process.port}/healthz"
            else:
                url = f"http://127.0.0.1:{process.ops_port}/readyz"
            while True:
                if process.popen.poll() is not None:
                    raise RuntimeError(f"{process.name} exited with {process.popen.returncode}:\n{self.tail(process)}")
                try:
                    if httpx.get(url, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{process.name} not ready after {timeout_s:.0f}s:\n{self.tail(process)}")
                time.sleep(0.25)

    @staticmethod
    def tail(process: Process, lines: int = 30) -> str:
        try:
            return "\n".join(process.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def signal(self, process: Process, sig: int) -> None:
        if process.popen.poll() is None:
            process.popen.send_signal(sig)

    def stop_process(self, process: Process, timeout_s: float = 20) -> int | None:
        self.signal(process, signal.SIGTERM)
        try:
            return process.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.popen.kill()
            return process.popen.wait(5)

    def kill_process(self, process: Process) -> None:
        self.signal(process, signal.SIGKILL)
        process.popen.wait(10)

    def restart(self, process: Process, *, hard: bool = True, extra_env: dict[str, str] | None = None,
                down_s: float = 0.0) -> Process:
        """kill -9 (``hard``) or SIGTERM a process, then start it again on the same ports."""
        if hard:
            self.kill_process(process)
        else:
            self.stop_process(process)
        self.processes.remove(process)
        time.sleep(down_s)
        again = self.start(process.name, port=process.port, ops_port=process.ops_port, extra_env=extra_env)
        self.wait_ready(processes=[again])
        return again

    def find(self, name: str, instance: int = 1) -> Process:
        return next(p for p in self.processes if p.name == name and p.instance == instance)

    def stop(self, timeout_s: float = 20) -> None:
        """SIGTERM every process (consumers first, simulator last), then SIGKILL stragglers."""
        order = sorted(self.processes, key=lambda p: p.name == "simulator")
        for process in order:
            self.signal(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in order:
            try:
                process.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(5)
        self.processes.clear()

    def url(self, name: str) -> str:
        """The API of ingest or reports (the simulator's API too)."""
        return f"http://127.0.0.1:{self.ports.of(name)}"

    def ops_url(self, name: str) -> str:
        """A service's ops port: /healthz, /readyz and /metrics."""
        return f"http://127.0.0.1:{self.ports.ops(name)}"
