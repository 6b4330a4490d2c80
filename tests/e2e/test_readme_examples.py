"""The README's examples, run as written, against the four services and the simulator.

Every ``sh`` block of the README's API section (from "## API" to "## Configuration") is run, in
order, as one bash script with ``set -euo pipefail``, the way a newcomer pastes them into one
shell. What the test changes, and nothing else:

- ``API=…`` and ``REPORTS=…`` point at this stack's ports instead of 28080 and 28083;
- the script runs in a scratch directory holding ``.venv`` and ``deploy`` (links to the checkout's)
  and ``.herald/receipt-secret`` (this stack's, as ``make run`` keeps it), with this stack's
  database and topics in the environment, so ``.venv/bin/herald`` talks to this stack;
- ``curl`` is a bash function around the real curl that records each call's HTTP status.

The examples fail the test when a command exits non-zero, a variable they set stays empty or
``null`` (a ``jq`` that found nothing), or a request gets an answer of 400 or above (the README
marks none of its examples as failing; the batch with one bad message is a 202).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from herald_tools.stack import Stack

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

CURL_WRAPPER = r'''
curl() {
  local out status
  out=$(command curl -sS -w '\n@@status=%{http_code}' "$@") || { echo "curl failed: $*" >&2; return 1; }
  status=${out##*@@status=}
  printf '%s\n' "${out%$'\n'@@status=*}"
  local call="${*//$'\n'/ }"
  printf '%s %s\n' "$status" "${call//Bearer hk_+([^ ])/Bearer hk_…}" >> "$CALLS"
}
'''


def api_blocks(text: str) -> list[str]:
    section = text[text.index("\n## API\n"):text.index("\n## Configuration\n")]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_the_api_section_has_the_examples_a_newcomer_runs() -> None:
    blocks = api_blocks(README.read_text())
    assert len(blocks) >= 10
    joined = "\n".join(blocks)
    for needed in ("KEY=$(", "API=http://127.0.0.1:28080", "REPORTS=http://127.0.0.1:28083", "/v1/campaigns/$C/launch"):
        assert needed in joined, needed


@pytest.mark.timeout(600)
def test_the_readme_examples_run_as_written(stack: Stack, tmp_path: Path) -> None:
    if shutil.which("jq") is None or shutil.which("curl") is None:
        pytest.fail("the README's examples need curl and jq (named in the README's prerequisites)")
    script = "\n".join(api_blocks(README.read_text()))
    api, reports = stack.url("ingest"), stack.url("reports")
    script, n = re.subn(r"API=http://127\.0\.0\.1:28080 REPORTS=http://127\.0\.0\.1:28083",
                        f"API={api} REPORTS={reports}", script)
    assert n == 1, "the README sets API and REPORTS once, on one line"
    checks = "\n".join(
        f'[ -n "${{{var}:-}}" ] && [ "${{{var}}}" != null ] || {{ echo "{var} is empty or null" >&2; exit 3; }}'
        for var in ("KEY", "POLICY_KEY", "OTP", "DPO_KEY", "EXPORT_ID", "MSG", "A", "B", "C", "J_ID")
    )
    work = tmp_path / "checkout"
    (work / ".herald").mkdir(parents=True)
    (work / ".herald" / "receipt-secret").write_text(stack.receipt_secret)
    (work / ".venv").symlink_to(REPO / ".venv")
    (work / "deploy").symlink_to(REPO / "deploy")
    calls = tmp_path / "calls.txt"
    calls.touch()
    full = f"set -euo pipefail\nshopt -s extglob\n{CURL_WRAPPER}\n{script}\n{checks}\necho README-EXAMPLES-DONE\n"
    (tmp_path / "readme.sh").write_text(full)
    env = {**stack.base_env(), "CALLS": str(calls)}
    env.pop("HERALD_HTTP_PORT", None)
    run = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=work, env=env,
                         capture_output=True, text=True, timeout=540)
    answered = [line.split(" ", 1) for line in calls.read_text().splitlines()]
    report = f"stdout:\n{run.stdout[-4000:]}\nstderr:\n{run.stderr[-4000:]}\ncalls:\n" + "\n".join(
        " ".join(c) for c in answered)
    assert run.returncode == 0 and run.stdout.rstrip().endswith("README-EXAMPLES-DONE"), report
    failed = [c for c in answered if not c[0].isdigit() or int(c[0]) >= 400]
    assert not failed, report
    assert len(answered) >= 25, report
    assert (work / "messages.csv").read_text().startswith("message_id"), report
    assert (work / "report.png").read_bytes()[:4] == b"\x89PNG", report
