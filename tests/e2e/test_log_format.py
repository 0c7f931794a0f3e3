"""`jwsd --log-format json`: every line of jwsd's log is one JSON object, and each
line about a call carries its user and peer, and its job once the call names one,
so that a log shipper (or `journalctl -o cat | jq`) can filter on them.

Hierarchy-independent: logging knows nothing of cgroups.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_root
from tests.e2e.conftest import start_jwsd
from tests.support.certs import TestPKI

pytestmark = [pytest.mark.e2e, pytest.mark.hierarchy_independent]


def test_every_line_is_json_and_a_calls_lines_carry_its_job_user_and_peer(
    tmp_path: Path, pki: TestPKI
) -> None:
    require_root()
    daemon = start_jwsd(tmp_path, pki, "--log-format", "json")
    try:
        started = daemon.jws("start", "--", "sleep", "60")
        job_id = started.stdout.decode().strip()
        assert started.returncode == 0 and job_id, started.stderr
        assert daemon.jws("stop", "-j", job_id).returncode == 0
        assert daemon.jws("status", "-j", job_id, user="betty").returncode != 0
    finally:
        assert daemon.stop() == 0, daemon.log
    lines: list[dict[str, Any]] = []
    for text in daemon.log.splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
        else:  # only what jwsd's own logging does not write may be plain (none today)
            raise AssertionError(f"a line that is not JSON: {text!r}")
    assert any(" listening on " in line["message"] for line in lines)  # "jwsd VERSION listening on"
    calls = [line for line in lines if line["logger"] == "jobworker.access"]
    by_method = {line["message"].split("method=")[1].split()[0]: line for line in calls}
    for method, user in (("StartJob", "alex"), ("StopJob", "alex"), ("GetJobStatus", "betty")):
        line = by_method[method]
        assert (line["job"], line["user"]) == (job_id, user), line
        assert line["peer"].startswith("127.0.0.1:"), line
    # The audit record of the start is a line about the same call: the same fields.
    (audit,) = [
        line
        for line in lines
        if line["logger"] == "jobworker.audit" and '"method":"StartJob"' in line["message"]
    ]
    assert (audit["job"], audit["user"]) == (job_id, "alex")
