from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from herald_tools.stack import Ports, Stack
from tests.conftest import Env, own_topics


@pytest.fixture(scope="module")
async def env(session_env: Env) -> AsyncIterator[Env]:
    """The session's database with topics of this module's own (see own_topics)."""
    async for own in own_topics(session_env):
        yield own


@pytest.fixture(scope="module")
def stack(env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """All four services and the gateway simulator as processes, on free ports."""
    log_dir = Path(tmp_path_factory.mktemp("logs"))
    s = Stack(
        env={**env.vars(), "HERALD_LOG_FORMAT": "text", "HERALD_SIM_RECEIPT_DELAY_MAX_MS": "200",
             "HERALD_CONSUMER_POLL_MS": "100"},
        ports=Ports.random(),
        log_dir=log_dir,
    )
    s.start_all()
    try:
        s.wait_ready(90)
        yield s
    finally:
        s.stop()
        for log in sorted(log_dir.glob("*.log")):
            errors = [line for line in log.read_text(errors="replace").splitlines() if " ERROR " in line or "Traceback" in line]
            if errors:
                print(f"--- {log.name}: {len(errors)} error lines, first: {errors[0]}")
