"""`herald up`'s shutdown: stop first, report after, and never let a closed pipe abort it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from herald_tools import demo


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.processes: list[SimpleNamespace] = []

    def stop(self) -> None:
        self.calls.append("stack.stop")


def test_shutdown_stops_everything_even_when_every_print_fails() -> None:
    stack = Recorder()

    def broken(_: str) -> None:
        stack.calls.append("print")
        raise BrokenPipeError(32, "Broken pipe")

    def stop_infra() -> str:
        stack.calls.append("infra.stop")
        return "kafka stopped"

    try:
        demo.shutdown(stack, keep_infra=False, stop_infra=stop_infra, tell=broken)  # type: ignore[arg-type]
    except BrokenPipeError:
        pass
    assert stack.calls[:2] == ["stack.stop", "infra.stop"]


def test_shutdown_keeps_infra_when_asked() -> None:
    stack = Recorder()
    said: list[str] = []
    demo.shutdown(stack, keep_infra=True, stop_infra=lambda: pytest_fail(), tell=said.append)  # type: ignore[arg-type]
    assert stack.calls == ["stack.stop"] and said == ["services stopped"]


def pytest_fail() -> str:
    raise AssertionError("infrastructure stopped although it was to be kept")


def test_say_survives_a_closed_pipe() -> None:
    """Like `make run | tee log` after Ctrl-C ended tee: the reader is gone."""
    code = (
        "from herald_tools.demo import say\n"
        "import sys\n"
        "for _ in range(200): say('x' * 1000)\n"
        "sys.stderr.write('survived\\n')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader goes away before the writer prints
    _, err = proc.communicate(timeout=60)
    assert b"survived" in err, err.decode()


def test_wait_for_stop_notices_services_stopped_from_outside() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    stack = Recorder()
    stack.processes = [SimpleNamespace(name="ingest", popen=child)]
    started = time.monotonic()
    why = demo.wait_for_stop(stack, poll_s=0.1)  # type: ignore[arg-type]
    assert "ingest" in why and time.monotonic() - started < 10
    # It blocked SIGINT and SIGTERM to wait for them: they are unblocked again (a process started
    # afterwards inherits the mask and would never get its stop signal: an e2e test's dispatcher,
    # started after this test, had to be killed instead of stopped).
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == set()


def test_the_stack_starts_its_services_with_no_signal_blocked() -> None:
    from herald_tools.stack import _die_with_parent

    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        child = subprocess.run(
            [sys.executable, "-c", "import signal; print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, set())))"],
            preexec_fn=_die_with_parent, capture_output=True, text=True, timeout=30, check=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    assert child.stdout.strip() == "[]"
