"""Names and labels through the real jwsd and jws (issue 22): `start --name --label`,
names taken where ids are (and found among the caller's own jobs only), `status`
and `list` showing them, and `jws list`'s filters applied by jwsd."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.e2e.conftest import Jwsd
from tests.e2e.test_watch import events_until, kinds
from tests.support.timing import scaled

pytestmark = [pytest.mark.root, pytest.mark.hierarchy_independent]


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


def refused(result: subprocess.CompletedProcess[bytes], code: int, said: str) -> None:
    err = result.stderr.decode(errors="replace")
    assert result.returncode == code, err
    assert said in err, err


def listed(jwsd: Jwsd, *args: str, user: str = "alex") -> list[str]:
    """The names of the jobs `jws list --json ARGS` shows."""
    return [job["name"] for job in json.loads(ok(jwsd.jws("list", "--json", *args, user=user)))]


def test_names_and_labels_are_shown_taken_for_ids_and_filtered_by_jwsd(jwsd: Jwsd) -> None:
    build = ok(
        jwsd.jws("start", "--name", "build", "--label", "team=infra", "--", "sleep", "30")
    ).strip()
    ok(jwsd.jws("start", "--name", "quick", "--label", "team=web", "--", "true"))
    ok(jwsd.jws("start", "--name", "build", "--", "sleep", "30", user="betty"))
    refused(
        jwsd.jws("start", "--name", "build", "--", "true"), 1, "already have a job named 'build'"
    )
    assert listed(jwsd) == ["build", "quick"]  # the refused start recorded nothing

    ok(jwsd.jws("output", "-j", "quick"))  # a name where an id goes: follows it to its end
    status = json.loads(ok(jwsd.jws("status", "-j", "build", "--json")))
    assert (status["job_id"], status["name"], status["labels"]) == (
        build,
        "build",
        {"team": "infra"},
    )
    text = ok(jwsd.jws("status", "-j", "build"))
    assert "name     build" in text and "labels   team=infra" in text
    table = ok(jwsd.jws("list")).splitlines()
    assert table[0].split()[:3] == ["JOB", "ID", "NAME"]
    assert [line.split()[1] for line in table[1:]] == ["build", "quick"]

    assert listed(jwsd, "--label", "team=infra") == ["build"]
    assert listed(jwsd, "--label", "team=infra", "--label", "tier=x") == []
    assert listed(jwsd, "--state", "ended") == ["quick"]
    assert listed(jwsd, "--state", "active") == ["build"]
    assert listed(jwsd, "--name", "quick") == ["quick"]
    assert listed(jwsd, "--since", "1h") == ["build", "quick"]
    assert listed(jwsd, "--since", "2000-01-01T00:00:00Z") == ["build", "quick"]
    assert listed(jwsd, "--name", "build", user="admin") == ["build", "build"]
    assert listed(jwsd, "--owner", "betty", user="admin") == ["build"]
    refused(jwsd.jws("list", "--owner", "alex", user="betty"), 1, "access denied")
    refused(jwsd.jws("list", "--since", "2999-01-01T00:00:00Z"), 1, "in the future")

    # betty's name lookups see her own jobs: her `build`, never alex's.
    betty = json.loads(ok(jwsd.jws("status", "-j", "build", "--json", user="betty")))
    assert betty["owner"] == "betty" and betty["job_id"] != build
    refused(jwsd.jws("status", "-j", "quick", user="betty"), 1, "no job of yours is named")
    refused(jwsd.jws("stop", "quick", user="betty"), 1, "no job of yours is named")
    refused(jwsd.jws("status", "-j", "quick", user="admin"), 1, "no job of yours is named")

    ok(jwsd.jws("stop", "build", "--grace", "0"))
    ok(jwsd.jws("stop", "build", "--grace", "0", user="betty"))
    ok(jwsd.jws("rm", "build", "quick"))
    assert listed(jwsd) == []
    ok(jwsd.jws("start", "--name", "build", "--", "true"))  # a removed job's name is free


#: Bad names and labels, and what `jws start` says of each.
BAD_STARTS = [
    (["--name", "bad name"], "--name: bad job name"),
    (["--name", "5f0c1a2b-0000-4000-8000-000000000000"], "reads as a job id"),
    (["--label", "team"], "--label: a label is KEY=VALUE"),
    (["--label", "Bad.Prefix/x=y"], "DNS subdomain"),
    (["--label", "a=1", "--label", "a=2"], "given twice"),
]


def test_a_bad_name_or_label_is_a_usage_error_that_never_reaches_jwsd(jwsd: Jwsd) -> None:
    for args, said in BAD_STARTS:
        refused(jwsd.jws("start", *args, "--", "true"), 2, said)
    assert listed(jwsd) == []
    assert "method=StartJob" not in jwsd.log


def test_a_name_shaped_like_an_id_prefix_is_the_name_and_a_prefix_goes_where_a_name_does(
    jwsd: Jwsd,
) -> None:
    """One resolver for what is typed where a job goes: `abc` could begin an id, yet
    it is alex's job of that name (as docker takes a name before an id prefix),
    never another user's; an id's prefix works for `jws wait` and `jws events`."""
    named = ok(jwsd.jws("start", "--name", "abc", "--", "sh", "-c", "exit 3")).strip()
    plain = ok(jwsd.jws("start", "--", "sh", "-c", "exit 0")).strip()
    prefix = next(plain[:n] for n in range(4, 36) if not named.startswith(plain[:n]))

    waited = jwsd.jws("wait", "abc", prefix, "--json")
    assert waited.returncode == 3, waited.stderr.decode(errors="replace")
    assert [job["job_id"] for job in json.loads(waited.stdout)] == [named, plain]
    assert json.loads(ok(jwsd.jws("status", "abc", "--json")))["job_id"] == named
    assert ok(jwsd.jws("output", "-j", "abc")) == ""
    # betty has no job named abc: alex's is not hers to find, by name or otherwise.
    refused(jwsd.jws("status", "abc", user="betty"), 1, "no job")

    events = jwsd.popen("events", "-j", prefix, "--json")
    try:
        assert kinds(events_until(events, 1, "the watch begins")) == ["watching"]
        ok(jwsd.jws("rm", prefix))
        removed = events_until(events, 1, "the job's removal")
        assert kinds(removed) == ["removed"]
        assert removed[0]["job"]["job_id"] == plain  # type: ignore[index]
    finally:
        events.kill()
        events.communicate(timeout=scaled(10))  # closes its pipes
