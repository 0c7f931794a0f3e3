"""How jws shows a job: the seed's word first, then how it ended."""

from __future__ import annotations

from jobworker.cli import render
from jobworker.limits import limits_text
from jobworker.messages import status_from_proto
from jobworker.model import JobStatus
from jobworker.v1 import jobworker_pb2 as pb


def _job(**fields: object) -> JobStatus:
    """A status as the client reads it from the wire."""
    base: dict[str, object] = {
        "job_id": "j1",
        "owner": "alex",
        "args": ["sh", "-c", "exit 3"],
        "created_at": 100.0,
        "started_at": 100.0,
    }
    base.update(fields)
    return status_from_proto(pb.GetJobStatusResponse(**base))  # type: ignore[arg-type]


def test_the_headline_says_how_a_job_ended() -> None:
    assert render.headline(_job(status="Active")) == "Active"
    assert render.headline(_job(status="Terminated", exit_code=3)) == "Terminated (exit code 3)"
    assert (
        render.headline(
            _job(
                status="Terminated",
                outcome="oom-killed",
                exit_code=137,
                signal=9,
                signal_name="SIGKILL",
                oom_killed=True,
            )
        )
        == "Terminated (OOM-killed at its memory limit, killed by SIGKILL, exit code 137)"
    )
    assert (
        render.headline(
            _job(
                status="Terminated",
                exit_code=143,
                signal=15,
                signal_name="SIGTERM",
                outcome="stopped",
                stopped_by_user=True,
            )
        )
        == "Terminated (stopped, killed by SIGTERM, exit code 143)"
    )


def test_status_text_and_json_carry_the_details() -> None:
    job = _job(
        status="Terminated",
        exit_code=3,
        ended_at=102.5,
        limits=pb.Limits(memory_bytes=64 << 20, cpu=0.5),
        output_bytes=2048,
    )
    text = render.status_text(job, now=110.0)
    assert text.splitlines()[0] == "Terminated (exit code 3)"
    assert "command  sh -c 'exit 3'" in text
    assert "ran 2.5 s" in text
    assert "limits   cpu 0.5, memory 64.0 MiB" in text
    assert "output 2.0 KiB" in text
    data = render.status_dict(job)
    assert data["exit_code"] == 3
    assert data["signal"] is None
    assert data["limits"]["memory_bytes"] == 64 << 20
    assert data["limits"]["pids"] is None


def test_the_list_table_lines_up() -> None:
    table = render.table(
        [
            _job(status="Active"),
            _job(job_id="j2", status="Terminated", exit_code=0, name="nightly"),
        ],
        now=160.0,
    )
    lines = table.splitlines()
    assert lines[0].split() == ["JOB", "ID", "NAME", "STATUS", "EXIT", "STARTED", "COMMAND"]
    assert lines[1].split()[:4] == ["j1", "-", "Active", "-"]
    assert "1 min 0 s ago" in lines[1]
    assert lines[2].split()[:4] == ["j2", "nightly", "Terminated", "0"]
    assert lines[1].index("Active") == lines[2].index("Terminated")  # the columns line up


def test_status_and_json_show_the_name_and_labels() -> None:
    job = _job(status="Active", name="nightly", labels={"team": "infra", "example.com/tier": "web"})
    text = render.status_text(job, now=110.0)
    assert "  name     nightly" in text
    assert "labels   example.com/tier=web team=infra" in text
    data = render.status_dict(job)
    assert data["name"] == "nightly"
    assert data["labels"] == {"example.com/tier": "web", "team": "infra"}
    assert render.status_dict(_job(status="Active"))["name"] is None


def test_status_shows_disk_usage_and_why_output_was_truncated() -> None:
    job = _job(
        status="Terminated",
        exit_code=141,
        ended_at=101.0,
        limits=pb.Limits(output_bytes=1 << 20),
        output_bytes=1 << 20,
        output_disk_bytes=1 << 20,
        workdir_bytes=3 << 20,
        output_truncated=True,
        output_truncated_reason="the output limit of 1048576 bytes was reached",
    )
    text = render.status_text(job, now=110.0)
    assert "disk       output 1.0 MiB, work dir 3.0 MiB" in text
    assert "truncated  the output limit of 1048576 bytes was reached" in text
    assert "output 1.0 MiB" in limits_text(job.spec.limits)
    data = render.status_dict(job)
    assert data["output_truncated"] is True
    assert data["output_truncated_reason"].startswith("the output limit")
    assert (data["output_disk_bytes"], data["workdir_bytes"]) == (1 << 20, 3 << 20)
    assert data["limits"]["output_bytes"] == 1 << 20
    assert "truncated" not in render.status_text(_job(status="Active"))


def test_the_list_table_shows_owners_when_asked_and_cuts_commands_to_the_width() -> None:
    long = _job(status="Active", args=["echo", "x" * 200])
    table = render.table(
        [long, _job(job_id="j2", owner="betty", status="Active")], now=160.0, owners=True
    )
    lines = table.splitlines()
    assert lines[0].split() == [
        "JOB",
        "ID",
        "OWNER",
        "NAME",
        "STATUS",
        "EXIT",
        "STARTED",
        "COMMAND",
    ]
    assert lines[2].split()[:2] == ["j2", "betty"]
    assert lines[1].endswith("...") and len(lines[1].split("  ")[-1]) == render.COMMAND_WIDTH
    narrow = render.table([long], now=160.0, command_width=20).splitlines()[1]
    assert narrow.endswith("  echo " + "x" * 12 + "...")
    whole = render.table([long], now=160.0, command_width=None).splitlines()[1]
    assert whole.endswith("echo " + "x" * 200)
