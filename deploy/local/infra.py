#!/usr/bin/env python3
"""Herald's local infrastructure: a real Apache Kafka broker and PostgreSQL 15.

    python3 deploy/local/infra.py start|stop|status|reset|env [--quiet]
    python3 deploy/local/infra.py stop kafka|postgres      (one server; `start` brings it back)

Both servers run on 127.0.0.1 only, as plain processes (no Docker):

* Kafka 4.1.1 in KRaft mode (one node that is broker and controller), its jars
  fetched once by Maven into ${XDG_CACHE_HOME:-~/.cache}/herald/kafka-4.1.1/.
* PostgreSQL 15 from the installed binaries, with a database ``herald``.

Ports: HERALD_KAFKA_PORT (19092), HERALD_KAFKA_CONTROLLER_PORT (19093),
HERALD_PG_PORT (15432). State: HERALD_STATE_DIR (<repo root>/.herald).
HERALD_PG_FSYNC=off turns PostgreSQL's fsync off (it is on by default).

Standard library only: this runs before any virtualenv exists.
See docs/local-infra.md.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SCRIPT = Path(__file__).resolve()
REPO_ROOT = SCRIPT.parents[2]
KAFKA_VERSION = "4.1.1"
KAFKA_POM = SCRIPT.parent / "kafka" / "pom.xml"
KAFKA_LOG4J2 = SCRIPT.parent / "kafka" / "log4j2.xml"
HOST = "127.0.0.1"
DATABASE = "herald"
PG_SUPERUSER = "postgres"
PG_OS_USER = "postgres"

KAFKA_READY_TIMEOUT = 90.0
KAFKA_STOP_GRACE = 20.0
PG_START_WAIT = 30
STATE_MARKER = ".herald-state"
JARS_MARKER = ".complete"

DEFAULT_PORTS = {
    "HERALD_KAFKA_PORT": 19092,
    "HERALD_KAFKA_CONTROLLER_PORT": 19093,
    "HERALD_PG_PORT": 15432,
}


class InfraError(Exception):
    """A failure with a message for the user; the script exits 1."""


# --------------------------------------------------------------------------
# configuration and output


@dataclass(frozen=True)
class Config:
    state_dir: Path
    kafka_port: int
    controller_port: int
    pg_port: int
    cache_dir: Path
    pg_fsync: str
    quiet: bool

    @property
    def kafka_dir(self) -> Path:
        return self.state_dir / "kafka"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{HOST}:{self.kafka_port}"

    @property
    def database_url(self) -> str:
        return f"postgresql://{PG_SUPERUSER}@{HOST}:{self.pg_port}/{DATABASE}"


def _port_from_env(var: str) -> int:
    raw = os.environ.get(var, "").strip()
    if not raw:
        return DEFAULT_PORTS[var]
    try:
        port = int(raw)
    except ValueError:
        raise InfraError(f"{var}={raw!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise InfraError(f"{var}={port} is outside 1-65535")
    return port


def load_config(quiet: bool = False) -> Config:
    kafka_port = _port_from_env("HERALD_KAFKA_PORT")
    controller_port = _port_from_env("HERALD_KAFKA_CONTROLLER_PORT")
    pg_port = _port_from_env("HERALD_PG_PORT")
    if len({kafka_port, controller_port, pg_port}) != 3:
        raise InfraError(
            "HERALD_KAFKA_PORT, HERALD_KAFKA_CONTROLLER_PORT and HERALD_PG_PORT "
            f"must differ (got {kafka_port}, {controller_port}, {pg_port})"
        )
    raw_state = os.environ.get("HERALD_STATE_DIR", "").strip()
    state = Path(raw_state).expanduser() if raw_state else REPO_ROOT / ".herald"
    state = Path(os.path.abspath(state))
    if state.exists():
        state = state.resolve()
    cache_root = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    cache = Path(cache_root).expanduser() / "herald" / f"kafka-{KAFKA_VERSION}"
    fsync = os.environ.get("HERALD_PG_FSYNC", "on").strip().lower() or "on"
    if fsync not in ("on", "off"):
        raise InfraError(f"HERALD_PG_FSYNC must be 'on' or 'off', not {fsync!r}")
    return Config(state, kafka_port, controller_port, pg_port, cache, fsync, quiet)


class Out:
    quiet = False

    @classmethod
    def info(cls, msg: str) -> None:
        if not cls.quiet:
            print(msg, flush=True)

    @staticmethod
    def warn(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)


def tail(path: Path, lines: int = 40, start: int = 0) -> str:
    """The last `lines` lines of a file, read from byte offset `start` on."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            begin = max(start, size - 256 * 1024)
            fh.seek(begin)
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


# --------------------------------------------------------------------------
# processes and ports


def run(
    cmd: list[str],
    *,
    timeout: float,
    what: str,
    cwd: Path | str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command with a timeout; never hangs, never raises for an exit code."""
    try:
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            cwd=cwd,
            env=env,
        )
    except subprocess.TimeoutExpired:
        raise InfraError(f"{what} did not finish within {timeout:.0f} s: {' '.join(cmd)}") from None
    except FileNotFoundError:
        raise InfraError(f"{what}: command not found: {cmd[0]}") from None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
    except (OSError, IndexError):
        pass
    return True


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]


def read_pid(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
        return int(first)
    except (OSError, ValueError):
        return None


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (or on the wildcard address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_owner(port: int) -> str | None:
    """Best effort: 'pid N (name)' of the process listening on the port."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) < 10:
                continue
            try:
                local_port = int(cols[1].rsplit(":", 1)[1], 16)
            except (IndexError, ValueError):
                continue
            if local_port == port and cols[3] == "0A":  # LISTEN
                inodes.add(cols[9])
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    name = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({name})"
        except OSError:
            continue
    return None


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


def check_port(port: int, var: str, server: str) -> None:
    low, high = ephemeral_range()
    if low <= port <= high:
        # While the server is down, a client's outgoing connection may get this port as its own
        # local port; a client retrying this very port can even connect to itself (TCP
        # self-connect). Either way the server cannot listen on it again until that ends.
        Out.warn(f"{server}: port {port} ({var}) lies in the kernel's ephemeral range {low}-{high}; "
                 f"a restart can find it taken by an outgoing connection. Prefer a port below {low}")
    if port_free(port):
        return
    owner = port_owner(port)
    who = f" by {owner}" if owner else ""
    raise InfraError(
        f"{server}: port {port} on {HOST} is already in use{who}. "
        f"Stop that process or choose another port: export {var}=<free port>"
    )


def is_root() -> bool:
    return os.geteuid() == 0


def find_runuser() -> str | None:
    """runuser lives in /usr/sbin, which a non-login root PATH may lack."""
    return shutil.which("runuser") or next(
        (p for p in ("/usr/sbin/runuser", "/sbin/runuser") if os.access(p, os.X_OK)), None)


@contextlib.contextmanager
def state_lock(cfg: Config, timeout: float = 180.0) -> Iterator[None]:
    """Serialise start/stop/reset of one state dir between concurrent callers."""
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.state_dir / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InfraError(f"another infra.py holds {path} for over {timeout:.0f} s") from None
                if not announced:
                    Out.info(f"waiting for another infra.py working on {cfg.state_dir} ...")
                    announced = True
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)


def ensure_state_dir(cfg: Config) -> None:
    created = not cfg.state_dir.exists()
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    if created:
        # postgres (when we are root) must be able to traverse it; umask may say otherwise
        os.chmod(cfg.state_dir, 0o755)
    marker = cfg.state_dir / STATE_MARKER
    if not marker.exists():
        marker.write_text("Herald local infrastructure state (deploy/local/infra.py); `reset` deletes this dir.\n")


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


# --------------------------------------------------------------------------
# Kafka wire protocol (hand-encoded ApiVersions v0 and Metadata v1-v8)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ValueError("short Kafka response")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def int8(self) -> int:
        return self._take(">b")

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def string(self) -> str | None:
        n = self.int16()
        if n < 0:
            return None
        if self.pos + n > len(self.data):
            raise ValueError("short Kafka response")
        s = self.data[self.pos : self.pos + n].decode("utf-8", "replace")
        self.pos += n
        return s


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("Kafka closed the connection")
        buf += chunk
    return bytes(buf)


def encode_request(api_key: int, api_version: int, correlation_id: int, body: bytes,
                   client_id: str = "herald-infra") -> bytes:
    """Size-prefixed request with header v1 (api key, version, correlation id, client id)."""
    cid = client_id.encode()
    header = struct.pack(">hhih", api_key, api_version, correlation_id, len(cid)) + cid
    msg = header + body
    return struct.pack(">i", len(msg)) + msg


def kafka_call(sock: socket.socket, api_key: int, api_version: int, correlation_id: int,
               body: bytes) -> _Reader:
    sock.sendall(encode_request(api_key, api_version, correlation_id, body))
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    if not 4 <= size <= 64 * 1024 * 1024:
        raise ValueError(f"implausible Kafka response size {size}")
    reader = _Reader(_recv_exact(sock, size))
    got = reader.int32()  # response header v0: correlation id
    if got != correlation_id:
        raise ValueError(f"correlation id {got} != {correlation_id}")
    return reader


def parse_api_versions_v0(reader: _Reader) -> tuple[int, dict[int, tuple[int, int]]]:
    error_code = reader.int16()
    versions: dict[int, tuple[int, int]] = {}
    count = reader.int32()
    for _ in range(max(count, 0)):
        key, lo, hi = reader.int16(), reader.int16(), reader.int16()
        versions[key] = (lo, hi)
    return error_code, versions


def encode_metadata_body(version: int) -> bytes:
    body = struct.pack(">i", 0)  # topics: an empty array (v1+: no topics, brokers only)
    if version >= 4:
        body += struct.pack(">b", 0)  # allow_auto_topic_creation
    if version >= 8:
        body += struct.pack(">bb", 0, 0)  # include cluster / topic authorized operations
    return body


def parse_metadata(reader: _Reader, version: int) -> tuple[list[tuple[int, str, int]], str | None, int]:
    if version >= 3:
        reader.int32()  # throttle_time_ms
    brokers = []
    for _ in range(max(reader.int32(), 0)):
        node_id, host, port = reader.int32(), reader.string(), reader.int32()
        reader.string()  # rack
        brokers.append((node_id, host or "", port))
    cluster_id = reader.string() if version >= 2 else None
    controller_id = reader.int32()
    return brokers, cluster_id, controller_id


@dataclass
class KafkaProbe:
    ok: bool
    detail: str
    cluster_id: str | None = None
    controller_id: int = -1
    wrong_cluster: bool = False  # answers, but for another cluster: waiting will not help


def probe_kafka(port: int, expect_cluster_id: str | None = None, timeout: float = 3.0) -> KafkaProbe:
    """ApiVersions v0 then Metadata: ready when a broker on `port` and a controller are known."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            error_code, versions = parse_api_versions_v0(kafka_call(sock, 18, 0, 1, b""))
            if error_code != 0:
                return KafkaProbe(False, f"ApiVersions error_code {error_code}")
            if 3 not in versions:
                return KafkaProbe(False, "broker lists no Metadata API")
            lo, hi = versions[3]
            version = min(hi, 8)  # v9+ are "flexible" (compact) encodings; stay below
            if version < max(lo, 1):
                return KafkaProbe(False, f"broker supports Metadata only v{lo}-v{hi}")
            reader = kafka_call(sock, 3, version, 2, encode_metadata_body(version))
            brokers, cluster_id, controller_id = parse_metadata(reader, version)
    except (OSError, ValueError) as exc:
        return KafkaProbe(False, f"{type(exc).__name__}: {exc}")
    if not any(p == port for _, _, p in brokers):
        return KafkaProbe(False, f"metadata lists no broker on port {port} yet ({brokers})", cluster_id)
    if controller_id < 0:
        return KafkaProbe(False, "metadata shows no controller yet", cluster_id)
    if expect_cluster_id and cluster_id and cluster_id != expect_cluster_id:
        return KafkaProbe(False, f"port {port} answers for cluster {cluster_id}, not ours ({expect_cluster_id})",
                          cluster_id, controller_id, wrong_cluster=True)
    return KafkaProbe(True, f"{len(versions)} APIs, {len(brokers)} broker(s), controller {controller_id}",
                      cluster_id, controller_id)


# --------------------------------------------------------------------------
# Kafka


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME", "").strip()
    candidates = []
    if java_home:
        candidates.append(os.path.join(java_home, "bin", "java"))
    which = shutil.which("java")
    if which:
        candidates.append(which)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    raise InfraError(
        "kafka: no `java` found (PATH or JAVA_HOME). Kafka 4.1 needs Java 17 or newer: "
        "install OpenJDK 17, e.g. `apt-get install openjdk-17-jre-headless`"
    )


def check_java(java: str) -> None:
    cp = run([java, "-version"], timeout=30, what="java -version")
    text = cp.stderr + cp.stdout
    m = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if cp.returncode != 0 or not m:
        raise InfraError(f"kafka: `{java} -version` failed: {text.strip()[:300]}")
    major = int(m.group(1))
    if major == 1 and m.group(2):
        major = int(m.group(2))
    if major < 17:
        raise InfraError(
            f"kafka: {java} is Java {major}; Kafka 4.1 needs Java 17 or newer: "
            "install OpenJDK 17, e.g. `apt-get install openjdk-17-jre-headless`"
        )


def _pom_digest() -> str:
    return hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()


def jars_ready(cfg: Config) -> bool:
    marker = cfg.cache_dir / JARS_MARKER
    try:
        return marker.read_text().strip() == _pom_digest() and any(cfg.cache_dir.glob("kafka_2.13-*.jar"))
    except OSError:
        return False


def ensure_jars(cfg: Config) -> None:
    if jars_ready(cfg):
        return
    mvn = shutil.which("mvn")
    if not mvn:
        raise InfraError(
            f"kafka: the Kafka {KAFKA_VERSION} jars are not in {cfg.cache_dir} and `mvn` is not on PATH "
            "to fetch them: install Maven, e.g. `apt-get install maven`"
        )
    Out.info(f"kafka: fetching Kafka {KAFKA_VERSION} jars with Maven into {cfg.cache_dir} ...")
    t0 = time.monotonic()
    # a half-finished earlier copy (no marker) is thrown away and done again
    shutil.rmtree(cfg.cache_dir, ignore_errors=True)
    partial = cfg.cache_dir.with_name(cfg.cache_dir.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cp = run(
        [mvn, "-q", "-B", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={partial}"],
        timeout=900, what="mvn dependency:copy-dependencies", cwd=KAFKA_POM.parent,
    )
    if cp.returncode != 0 or not any(partial.glob("kafka_2.13-*.jar")):
        shutil.rmtree(partial, ignore_errors=True)
        out = (cp.stdout + cp.stderr).strip().splitlines()[-30:]
        raise InfraError("kafka: Maven could not fetch the Kafka jars:\n" + "\n".join(out))
    (partial / JARS_MARKER).write_text(_pom_digest() + "\n")
    os.replace(partial, cfg.cache_dir)
    n = len(list(cfg.cache_dir.glob("*.jar")))
    Out.info(f"kafka: {n} jars ready ({time.monotonic() - t0:.1f} s)")


class Kafka:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.dir = cfg.kafka_dir
        self.data = self.dir / "data"
        self.logs = self.dir / "logs"
        self.props = self.dir / "server.properties"
        self.pidfile = self.dir / "kafka.pid"
        self.cluster_file = self.dir / "cluster.id"
        self.out = self.dir / "kafka.out"
        self.server_log = self.logs / "server.log"

    # -- state

    def _ours(self, pid: int) -> bool:
        args = cmdline(pid)
        return "kafka.Kafka" in args and str(self.props) in args

    def running_pid(self) -> int | None:
        pid = read_pid(self.pidfile)
        if pid and pid_alive(pid) and self._ours(pid):
            return pid
        # pid file lost or stale: look for a broker started on our server.properties
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                p = int(proc.name)
                if p != pid and self._ours(p) and pid_alive(p):
                    self.pidfile.write_text(f"{p}\n")
                    return p
        return None

    def cluster_id(self) -> str | None:
        try:
            return self.cluster_file.read_text().strip() or None
        except OSError:
            return None

    def _java_cmd(self, java: str, *args: str, heap: bool = False) -> list[str]:
        cmd = [java]
        if heap:
            cmd += ["-Xms256m", "-Xmx512m"]
        cmd += [
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J2}",
            f"-Dkafka.logs.dir={self.logs}",
            "-cp", f"{self.cfg.cache_dir}/*",
        ]
        return cmd + list(args)

    def write_properties(self) -> None:
        c = self.cfg
        text = f"""\
# Generated by deploy/local/infra.py on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{HOST}:{c.controller_port}
listeners=PLAINTEXT://{HOST}:{c.kafka_port},CONTROLLER://{HOST}:{c.controller_port}
advertised.listeners=PLAINTEXT://{HOST}:{c.kafka_port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={self.data}
num.partitions=6
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
"""
        self.props.write_text(text)

    def ensure_formatted(self, java: str) -> str:
        meta = self.data / "meta.properties"
        if meta.exists():
            cid = self.cluster_id()
            if not cid:
                m = re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.M)
                cid = m.group(1) if m else None
                if cid:
                    self.cluster_file.write_text(cid + "\n")
            if cid:
                return cid
        cid = self.cluster_id()
        if not cid:
            cp = run(self._java_cmd(java, "kafka.tools.StorageTool", "random-uuid"),
                     timeout=120, what="kafka StorageTool random-uuid", cwd=self.dir)
            words = cp.stdout.split()
            if cp.returncode != 0 or not words:
                raise InfraError(f"kafka: StorageTool random-uuid failed:\n{(cp.stdout + cp.stderr).strip()}")
            cid = words[-1]
            self.cluster_file.write_text(cid + "\n")
        Out.info(f"kafka: formatting storage (cluster id {cid}) ...")
        shutil.rmtree(self.data, ignore_errors=True)
        cp = run(self._java_cmd(java, "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(self.props)),
                 timeout=120, what="kafka StorageTool format", cwd=self.dir)
        if cp.returncode != 0 or not meta.exists():
            raise InfraError(f"kafka: StorageTool format failed:\n{(cp.stdout + cp.stderr).strip()}")
        return cid

    # -- commands

    def spawn(self, java: str) -> tuple[subprocess.Popen, int, float]:
        """Start the broker detached; returns (process, kafka.out offset, start time)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.out, "ab") as out:
            out.write(f"=== infra.py start {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode())
            offset = out.tell()
            t0 = time.monotonic()
            proc = subprocess.Popen(
                self._java_cmd(java, "kafka.Kafka", str(self.props), heap=True),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True, close_fds=True,
            )
        self.pidfile.write_text(f"{proc.pid}\n")
        return proc, offset, t0

    def wait_ready(self, pid: int, proc: subprocess.Popen | None, t0: float, out_offset: int,
                   timeout: float = KAFKA_READY_TIMEOUT) -> float:
        cid = self.cluster_id()
        deadline = t0 + timeout
        last = KafkaProbe(False, "not probed yet")
        while True:
            exited = proc.poll() is not None if proc else not pid_alive(pid)
            if exited:
                self._fail_with_logs(f"kafka: the broker (pid {pid}) exited during start-up", out_offset)
            last = probe_kafka(self.cfg.kafka_port, cid)
            if last.ok:
                return time.monotonic() - t0
            if last.wrong_cluster:
                self.stop(quiet=True)
                self._fail_with_logs(
                    f"kafka: {last.detail}: {self.data}/meta.properties and {self.cluster_file} disagree; "
                    "broker stopped. `python3 deploy/local/infra.py reset` starts afresh (deletes all data)",
                    out_offset)
            if time.monotonic() > deadline:
                self.stop(quiet=True)
                self._fail_with_logs(
                    f"kafka: not ready within {timeout:.0f} s (last check: {last.detail}); broker stopped",
                    out_offset)
            time.sleep(0.25)

    def _fail_with_logs(self, msg: str, out_offset: int) -> None:
        parts = [msg]
        log = tail(self.server_log, 40)
        if log:
            parts.append(f"--- last 40 lines of {self.server_log} ---\n{log}")
        out = tail(self.out, 40, start=out_offset)
        if out.strip():
            parts.append(f"--- last 40 lines of {self.out} ---\n{out}")
        raise InfraError("\n".join(parts))

    def stop(self, quiet: bool = False) -> None:
        pid = self.running_pid()
        if pid is None:
            if self.pidfile.exists():
                self.pidfile.unlink()
            if not quiet:
                Out.info("kafka: not running")
            return
        if not quiet:
            Out.info(f"kafka: stopping (pid {pid}) ...")
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not wait_gone(pid, KAFKA_STOP_GRACE):
            Out.warn(f"kafka: pid {pid} still alive after {KAFKA_STOP_GRACE:.0f} s; sending SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid, 10)
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()
        if not quiet:
            Out.info(f"kafka: stopped ({time.monotonic() - t0:.1f} s)")

    def status(self) -> tuple[bool, str]:
        pid = self.running_pid()
        where = self.cfg.kafka_bootstrap
        if pid is None:
            return False, f"kafka: stopped (port {self.cfg.kafka_port})"
        probe = probe_kafka(self.cfg.kafka_port, self.cluster_id())
        if probe.ok:
            return True, f"kafka: running (pid {pid}, {where}, cluster {probe.cluster_id})"
        return False, f"kafka: not responding (pid {pid}, {where}: {probe.detail})"


# --------------------------------------------------------------------------
# PostgreSQL


def find_pg_bindir() -> Path:
    """The folder of initdb/pg_ctl: PATH first, then /usr/lib/postgresql/*/bin (15 preferred)."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists()]

    def rank(d: Path) -> tuple[int, int]:
        v = d.parent.name
        major = int(v) if v.isdigit() else 0
        return (major == 15, major)

    if found:
        return max(found, key=rank)
    raise InfraError(
        "postgres: `initdb`/`pg_ctl` not found on PATH nor in /usr/lib/postgresql/*/bin: "
        "install PostgreSQL 15, e.g. `apt-get install postgresql`"
    )


@dataclass(frozen=True)
class PgLayout:
    root: Path  # owned by postgres when we are root
    fallback: bool

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def initialized_marker(self) -> Path:
        return self.root / ".initdb-done"

    def sockdir(self, port: int) -> Path:
        sock = self.root / "run"
        if len(str(sock)) + len(f"/.s.PGSQL.{port}.lock") >= 100:  # sun_path limit
            sock = Path("/tmp") / f"herald-pgsock-{short_hash(str(self.root))}"
        return sock


class Postgres:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pointer = cfg.state_dir / "pg-location"
        self._bindir: Path | None = None

    # -- binaries and users

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            self._bindir = find_pg_bindir()
        return self._bindir

    def bin(self, name: str) -> str:
        return str(self.bindir / name)

    def check_user(self) -> None:
        if not is_root():
            return
        import pwd

        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise InfraError(
                f"postgres: running as root, and initdb refuses root, but there is no `{PG_OS_USER}` user "
                "to run PostgreSQL as: `apt-get install postgresql` creates it "
                f"(or `useradd --system --home /var/lib/postgresql {PG_OS_USER}`)"
            ) from None
        if not find_runuser():
            raise InfraError("postgres: running as root needs `runuser` (util-linux) to act as postgres")

    def _ids(self) -> tuple[int, int]:
        import pwd

        pw = pwd.getpwnam(PG_OS_USER)
        return pw.pw_uid, pw.pw_gid

    def cmd(self, *args: str) -> list[str]:
        prefix = [find_runuser() or "runuser", "-u", PG_OS_USER, "--"] if is_root() else []
        return prefix + list(args)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def pg_run(self, *args: str, timeout: float, what: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return run(self.cmd(*args), timeout=timeout, what=what, cwd=cwd, env=self._env())

    # -- layout

    def _fallback_root(self) -> Path:
        return Path("/var/tmp") / f"herald-{short_hash(str(self.cfg.state_dir))}" / "pg"

    def layout(self) -> PgLayout:
        """Where the data is (for stop/status): the recorded fallback, else <state>/pg."""
        try:
            recorded = Path(self.pointer.read_text().strip())
            if recorded.is_absolute():
                return PgLayout(recorded, True)
        except OSError:
            pass
        return PgLayout(self.cfg.state_dir / "pg", False)

    def _postgres_can_traverse(self, path: Path) -> bool:
        cp = run(self.cmd("test", "-x", str(path)),
                 timeout=15, what="runuser test -x", cwd="/")
        return cp.returncode == 0

    def prepare_layout(self) -> PgLayout:
        lay = self.layout()
        if is_root() and not lay.fallback and not self._postgres_can_traverse(self.cfg.state_dir):
            lay = PgLayout(self._fallback_root(), True)
            Out.info(
                f"postgres: user {PG_OS_USER} cannot traverse {self.cfg.state_dir}; "
                f"keeping PostgreSQL data in {lay.root} instead"
            )
            self.pointer.write_text(f"{lay.root}\n")
        if lay.fallback:
            lay.root.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(lay.root.parent, 0o755)
        lay.root.mkdir(parents=True, exist_ok=True)
        sock = lay.sockdir(self.cfg.pg_port)
        sock.mkdir(parents=True, exist_ok=True)
        if is_root():
            uid, gid = self._ids()
            for p in (lay.root, sock):
                os.chown(p, uid, gid)
                os.chmod(p, 0o755)
        return lay

    # -- state

    def postmaster_pid(self, lay: PgLayout) -> int | None:
        pid = read_pid(lay.data / "postmaster.pid")
        if pid and pid_alive(pid):
            args = cmdline(pid)
            if args and "postgres" in os.path.basename(args[0]):
                return pid
        return None

    def is_ready(self, timeout: int = 3) -> bool:
        isready = self.bindir / "pg_isready"
        if isready.exists():
            cp = run([str(isready), "-q", "-h", HOST, "-p", str(self.cfg.pg_port), "-t", str(timeout)],
                     timeout=timeout + 10, what="pg_isready", env=self._env())
            return cp.returncode == 0
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.cfg.pg_port), timeout=timeout):
            return True
        return False

    def _orphans(self, lay: PgLayout) -> list[int]:
        """Processes left of a killed postmaster: PostgreSQL processes run with cwd = data dir."""
        data = str(lay.data.resolve()) if lay.data.exists() else str(lay.data)
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(proc / "cwd") == data:
                        pids.append(int(proc.name))
        return pids

    def clean_stale(self, lay: PgLayout) -> None:
        pidfile = lay.data / "postmaster.pid"
        if not pidfile.exists():
            return
        Out.info(f"postgres: removing stale {pidfile} (pid {read_pid(pidfile)} is gone)")
        deadline = time.monotonic() + 10
        while self._orphans(lay) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in self._orphans(lay):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        pidfile.unlink(missing_ok=True)
        lock = lay.sockdir(self.cfg.pg_port) / f".s.PGSQL.{self.cfg.pg_port}.lock"
        lock_pid = read_pid(lock)
        if lock.exists() and not (lock_pid and pid_alive(lock_pid)):
            lock.unlink(missing_ok=True)
            (lock.parent / f".s.PGSQL.{self.cfg.pg_port}").unlink(missing_ok=True)

    # -- commands

    def initdb(self, lay: PgLayout) -> None:
        if lay.initialized_marker.exists() and (lay.data / "PG_VERSION").exists():
            have = (lay.data / "PG_VERSION").read_text().strip()
            want = self.major()
            if want and have != want:
                raise InfraError(
                    f"postgres: {lay.data} was made by PostgreSQL {have} but the binaries in {self.bindir} "
                    f"are {want}: run `python3 deploy/local/infra.py reset` to start afresh"
                )
            return
        if lay.data.exists():
            shutil.rmtree(lay.data)  # left by an initdb that did not finish
        Out.info(f"postgres: initdb {lay.data} ...")
        cp = self.pg_run(self.bin("initdb"), "-D", str(lay.data), "-A", "trust", "-U", PG_SUPERUSER,
                         "-E", "UTF8", "--locale=C", timeout=180, what="initdb", cwd=lay.root)
        if cp.returncode != 0:
            raise InfraError(f"postgres: initdb failed:\n{(cp.stdout + cp.stderr).strip()}")
        lay.initialized_marker.write_text("ok\n")

    def major(self) -> str | None:
        v = self.bindir.parent.name
        if v.isdigit():
            return v
        cp = run([self.bin("pg_ctl"), "--version"], timeout=30, what="pg_ctl --version")
        m = re.search(r"(\d+)(?:\.\d+)?", cp.stdout)
        return m.group(1) if m else None

    def start(self, lay: PgLayout) -> None:
        pid = self.postmaster_pid(lay)
        if pid and self.is_ready():
            Out.info(f"postgres: already running (pid {pid}) on {HOST}:{self.cfg.pg_port}")
            self.ensure_database(lay)
            return
        if pid:
            raise InfraError(
                f"postgres: pid {pid} runs on {lay.data} but does not answer on {HOST}:{self.cfg.pg_port}; "
                "run `python3 deploy/local/infra.py stop` and start again"
            )
        self.clean_stale(lay)
        Out.info("postgres: starting ...")
        t0 = time.monotonic()
        sock = lay.sockdir(self.cfg.pg_port)
        opts = (f"-p {self.cfg.pg_port} -k {sock} -c listen_addresses={HOST} "
                f"-c max_connections=200 -c fsync={self.cfg.pg_fsync}")
        log_offset = lay.log.stat().st_size if lay.log.exists() else 0
        cp = self.pg_run(self.bin("pg_ctl"), "-D", str(lay.data), "-o", opts, "-l", str(lay.log),
                         "-w", "-t", str(PG_START_WAIT), "start",
                         timeout=PG_START_WAIT + 30, what="pg_ctl start", cwd=lay.root)
        if cp.returncode != 0:
            log = tail(lay.log, 40, start=log_offset)
            raise InfraError(
                f"postgres: pg_ctl start failed:\n{(cp.stdout + cp.stderr).strip()}\n"
                f"--- last 40 lines of {lay.log} ---\n{log}"
            )
        self.ensure_database(lay)
        Out.info(f"postgres: ready on {HOST}:{self.cfg.pg_port} ({time.monotonic() - t0:.1f} s), "
                 f"database {DATABASE}")

    def ensure_database(self, lay: PgLayout) -> None:
        conn = ["-h", HOST, "-p", str(self.cfg.pg_port), "-U", PG_SUPERUSER]
        cp = self.pg_run(self.bin("psql"), "-X", "-q", "-tA", *conn, "-d", "postgres", "-c",
                         f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",
                         timeout=30, what="psql", cwd=lay.root)
        if cp.returncode != 0:
            raise InfraError(f"postgres: psql failed: {(cp.stdout + cp.stderr).strip()}")
        if cp.stdout.strip() == "1":
            return
        cp = self.pg_run(self.bin("createdb"), *conn, DATABASE, timeout=60, what="createdb", cwd=lay.root)
        if cp.returncode != 0 and "already exists" not in cp.stderr:
            raise InfraError(f"postgres: createdb {DATABASE} failed: {(cp.stdout + cp.stderr).strip()}")
        Out.info(f"postgres: created database {DATABASE}")

    def stop(self) -> None:
        lay = self.layout()
        pid = self.postmaster_pid(lay)
        if pid is None:
            if (lay.data / "postmaster.pid").exists():
                self.clean_stale(lay)
            Out.info("postgres: not running")
            return
        Out.info(f"postgres: stopping (pid {pid}) ...")
        t0 = time.monotonic()
        stopped = False
        try:
            cwd = lay.root if lay.root.exists() else Path("/")
            for mode in ("fast", "immediate"):
                cp = self.pg_run(self.bin("pg_ctl"), "-D", str(lay.data), "-m", mode, "-w", "-t", "30", "stop",
                                 timeout=60, what=f"pg_ctl stop -m {mode}", cwd=cwd)
                if cp.returncode == 0 or wait_gone(pid, 1):
                    stopped = True
                    break
                Out.warn(f"postgres: pg_ctl -m {mode} stop failed: {(cp.stdout + cp.stderr).strip()}")
        except InfraError as exc:  # e.g. binaries gone: fall back to signals
            Out.warn(str(exc))
        if not stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT)  # = fast shutdown
            if not wait_gone(pid, 20):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_gone(pid, 5)
        Out.info(f"postgres: stopped ({time.monotonic() - t0:.1f} s)")

    def status(self) -> tuple[bool, str]:
        lay = self.layout()
        pid = self.postmaster_pid(lay)
        where = f"{HOST}:{self.cfg.pg_port}"
        if pid is None:
            return False, f"postgres: stopped (port {self.cfg.pg_port})"
        try:
            ready = self.is_ready()
        except InfraError:
            ready = False
        if ready:
            return True, f"postgres: running (pid {pid}, {where}, data {lay.data})"
        return False, f"postgres: not responding (pid {pid}, {where})"


# --------------------------------------------------------------------------
# commands


def cmd_start(cfg: Config) -> int:
    java = find_java()
    check_java(java)
    pg = Postgres(cfg)
    pg.bindir  # noqa: B018 - fail early when PostgreSQL is not installed
    pg.check_user()
    ensure_state_dir(cfg)
    with state_lock(cfg):
        kafka = Kafka(cfg)
        kafka.dir.mkdir(parents=True, exist_ok=True)
        kafka_pid = kafka.running_pid()
        if kafka_pid is None:
            kafka.pidfile.unlink(missing_ok=True)  # stale
        lay = pg.prepare_layout()
        pg_pid = pg.postmaster_pid(lay)

        # every port check before anything starts, so a conflict leaves nothing behind
        if kafka_pid is None:
            check_port(cfg.kafka_port, "HERALD_KAFKA_PORT", "kafka")
            check_port(cfg.controller_port, "HERALD_KAFKA_CONTROLLER_PORT", "kafka")
        if pg_pid is None:
            check_port(cfg.pg_port, "HERALD_PG_PORT", "postgres")

        proc = None
        if kafka_pid is None:
            ensure_jars(cfg)
            kafka.write_properties()
            kafka.ensure_formatted(java)
            Out.info("kafka: starting ...")
            proc, out_offset, t0 = kafka.spawn(java)
            kafka_pid = proc.pid
        else:
            out_offset, t0 = (kafka.out.stat().st_size if kafka.out.exists() else 0), time.monotonic()

        # PostgreSQL comes up while the JVM boots
        pg.initdb(lay)
        pg.start(lay)

        took = kafka.wait_ready(kafka_pid, proc, t0, out_offset)
        if proc is None:
            Out.info(f"kafka: already running (pid {kafka_pid}) on {cfg.kafka_bootstrap}")
        else:
            Out.info(f"kafka: ready on {cfg.kafka_bootstrap} ({took:.1f} s, pid {kafka_pid})")
    Out.info('environment: eval "$(python3 deploy/local/infra.py env)"')
    return 0


def cmd_stop(cfg: Config, only: str | None = None) -> int:
    if not cfg.state_dir.exists():
        Out.info("kafka: not running")
        Out.info("postgres: not running")
        return 0
    with state_lock(cfg):
        if only in (None, "kafka"):
            Kafka(cfg).stop()
        if only in (None, "postgres"):
            Postgres(cfg).stop()
    return 0


def cmd_status(cfg: Config) -> int:
    if not cfg.state_dir.exists():
        print(f"kafka: stopped (port {cfg.kafka_port})")
        print(f"postgres: stopped (port {cfg.pg_port})")
        return 1
    k_ok, k_line = Kafka(cfg).status()
    p_ok, p_line = Postgres(cfg).status()
    print(k_line)
    print(p_line)
    return 0 if (k_ok and p_ok) else 1


def _safe_to_delete(path: Path) -> bool:
    forbidden = {Path("/"), Path.home().resolve(), REPO_ROOT, REPO_ROOT.parent}
    if path in forbidden or len(path.parts) < 3:
        return False
    if (path / STATE_MARKER).exists():
        return True
    return not any(p for p in path.iterdir() if p.name != ".lock")


def cmd_reset(cfg: Config) -> int:
    if not cfg.state_dir.exists():
        Out.info(f"reset: {cfg.state_dir} does not exist; nothing to do")
        return 0
    if not _safe_to_delete(cfg.state_dir):
        raise InfraError(
            f"reset: {cfg.state_dir} has no {STATE_MARKER} marker, so it may not be Herald's state dir; "
            "not deleting it"
        )
    with state_lock(cfg):
        Kafka(cfg).stop()
        pg = Postgres(cfg)
        pg.stop()
        lay = pg.layout()
        extra = [lay.sockdir(cfg.pg_port)]
        if lay.fallback:
            extra.append(lay.root.parent)
        for p in extra:
            if not str(p).startswith(str(cfg.state_dir) + os.sep):
                shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(cfg.state_dir)
    Out.info(f"reset: deleted {cfg.state_dir}")
    return 0


def cmd_env(cfg: Config) -> int:
    print(f"export HERALD_KAFKA_BOOTSTRAP={cfg.kafka_bootstrap}")
    print(f"export HERALD_DATABASE_URL={cfg.database_url}")
    return 0


COMMANDS = {"start": cmd_start, "stop": cmd_stop, "status": cmd_status, "reset": cmd_reset, "env": cmd_env}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra.py",
        description="Start, stop and report Herald's local Kafka (KRaft) and PostgreSQL 15 on 127.0.0.1.",
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument(
        "server", nargs="?", choices=("kafka", "postgres"), help="with stop: stop only this server (fault tests)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors (and status/env output)")
    args = parser.parse_args(argv)
    Out.quiet = args.quiet
    try:
        cfg = load_config(args.quiet)
        if args.server is not None:
            if args.command != "stop":
                parser.error("a server name goes only with stop")
            return cmd_stop(cfg, args.server)
        return COMMANDS[args.command](cfg)
    except InfraError as exc:
        Out.warn(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        Out.warn("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
