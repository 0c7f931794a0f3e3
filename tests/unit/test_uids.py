"""The host uid range (`--job-uids`) and the owners' ids in it (`DATA/uids.json`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from jobworker.errors import QuotaExceededError, SetupError, StartFailedError
from jobworker.jobs.uids import (
    DEFAULT_RANGE,
    MIN_COUNT,
    UIDS_NAME,
    HostUids,
    UidRange,
    check_host_free,
    check_mapped,
    read_subordinate,
)


def test_the_default_range_is_65536_ids_from_0x70000000() -> None:
    assert (DEFAULT_RANGE.first, DEFAULT_RANGE.last, DEFAULT_RANGE.count) == (
        1879048192,
        1879113727,
        65536,
    )
    assert UidRange.parse(str(DEFAULT_RANGE)) == DEFAULT_RANGE


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("600000", "not FIRST-LAST"),
        ("600000-", "not FIRST-LAST"),
        ("a-b", "not FIRST-LAST"),
        ("-5-100", "not FIRST-LAST"),
        ("600000-600010", f"fewer than {MIN_COUNT} ids"),
        ("700000-600000", f"fewer than {MIN_COUNT} ids"),
        ("0-1000", "holds 0"),
        ("65000-70000", "holds 65535"),
        ("4294967000-4294967295", "past the biggest uid"),
        ("99999999999-99999999999", "not FIRST-LAST"),
    ],
)
def test_a_malformed_or_unusable_range_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        UidRange.parse(text)


def test_a_range_holding_an_account_group_or_subordinate_range_is_refused() -> None:
    uids = UidRange.parse("600000-665535")
    uids.check_free([("nobody", 65534), ("root", 0)], [("nogroup", 65534)], [])
    with pytest.raises(SetupError, match="holds 600100, the id of the host's user svc"):
        uids.check_free([("svc", 600100)], [], [])
    with pytest.raises(SetupError, match="holds 665535, the id of the host's group staff2"):
        uids.check_free([], [("staff2", 665535)], [])
    # Subordinate ranges that only touch its ends are fine; overlapping by one is not.
    uids.check_free([], [], [("/etc/subuid", "alex", 534464, 65536)])
    uids.check_free([], [], [("/etc/subuid", "alex", 665536, 65536)])
    with pytest.raises(SetupError, match=r"alex's subordinate ids 534465-600000 in /etc/subuid"):
        uids.check_free([], [], [("/etc/subuid", "alex", 534465, 65536)])
    with pytest.raises(SetupError, match="overlaps betty's"):
        uids.check_free([], [], [("/etc/subgid", "betty", 100000, 1 << 30)])


def test_subordinate_files_are_read_as_newuidmap_does(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("alex:100000:65536\n# a comment\nbroken line\nbetty:165536:65536\n")
    assert read_subordinate(path) == [
        (str(path), "alex", 100000, 65536),
        (str(path), "betty", 165536, 65536),
    ]
    assert read_subordinate(tmp_path / "missing") == []


def test_the_default_range_is_free_on_this_host(tmp_path: Path) -> None:
    """The host's passwd and group (through the name service) and its subordinate
    files hold nothing of the default range; a range over nobody's uid is refused."""
    check_host_free(DEFAULT_RANGE)
    subuid = tmp_path / "subuid"
    subuid.write_text(f"carol:{DEFAULT_RANGE.last}:10\n")
    with pytest.raises(SetupError, match="carol's subordinate ids"):
        check_host_free(DEFAULT_RANGE, subuid=subuid, subgid=tmp_path / "none")
    with pytest.raises(SetupError, match="holds 65534, the id of the host's user nobody"):
        check_host_free(UidRange.parse("65400-65534"))


def test_a_range_outside_jwsds_user_namespace_is_refused(tmp_path: Path) -> None:
    """In a rootless container jwsd's user namespace may hold 65,536 ids: setpriv to
    an id beyond them fails at every start, so the range is refused at start-up."""
    uid_map = tmp_path / "uid_map"
    uid_map.write_text("         0     100000      65536\n")
    check_mapped(UidRange.parse("60000-65533"), uid_map)
    with pytest.raises(SetupError, match=r"is not all in jwsd's user namespace \(.* has 0-65535\)"):
        check_mapped(DEFAULT_RANGE, uid_map)
    with pytest.raises(SetupError, match="not all in"):
        check_mapped(UidRange.parse("65536-65700"), uid_map)
    uid_map.write_text("0 0 4294967295\n")
    check_mapped(DEFAULT_RANGE, uid_map)


async def test_owners_get_the_lowest_free_ids_and_keep_them_across_loads(tmp_path: Path) -> None:
    uids = UidRange.parse("600000-600063")
    table = HostUids.load(tmp_path, uids)
    assert table.known("alex") is None
    assert not (tmp_path / UIDS_NAME).exists(), "nothing written before an owner needs it"
    assert await table.allocate("alex") == 600000
    assert await table.allocate("betty") == 600001
    assert await table.allocate("alex") == 600000
    assert table.known("betty") == 600001
    stored = json.loads((tmp_path / UIDS_NAME).read_text())
    assert stored == {"range": "600000-600063", "owners": {"alex": 600000, "betty": 600001}}
    assert (tmp_path / UIDS_NAME).stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / f"{UIDS_NAME}.tmp").exists()
    again = HostUids.load(tmp_path, uids)
    assert (again.known("alex"), again.known("betty")) == (600000, 600001)
    assert await again.allocate("carol") == 600002


async def test_concurrent_first_starts_of_one_owner_get_one_id(tmp_path: Path) -> None:
    table = HostUids.load(tmp_path, UidRange.parse("600000-600063"))
    got: list[int] = []

    async def allocate(owner: str) -> None:
        got.append(await table.allocate(owner))

    async with trio.open_nursery() as nursery:
        for owner in ["alex"] * 5 + ["betty"] * 5:
            nursery.start_soon(allocate, owner)
    assert sorted(set(got)) == [600000, 600001] and len(got) == 10


async def test_a_used_up_range_is_a_quota_error_and_an_unwritable_table_a_start_error(
    tmp_path: Path,
) -> None:
    uids = UidRange.parse("600000-600063")
    table = HostUids.load(tmp_path, uids)
    for i in range(uids.count):
        await table.allocate(f"user{i}")
    with pytest.raises(QuotaExceededError, match="every host uid of --job-uids 600000-600063"):
        await table.allocate("one-too-many")
    # A data dir that is not a dir any more (root writes anywhere else).
    (tmp_path / "gone").mkdir()
    table = HostUids.load(tmp_path / "gone", uids)
    (tmp_path / "gone").rmdir()
    (tmp_path / "gone").write_text("")
    with pytest.raises(StartFailedError, match="cannot give alex a host uid"):
        await table.allocate("alex")
    assert table.known("alex") is None, "a failed write allocated nothing"


def test_ids_outside_a_changed_range_are_dropped_and_records_fill_the_gaps(tmp_path: Path) -> None:
    (tmp_path / UIDS_NAME).write_text(
        json.dumps({"range": "500000-565535", "owners": {"alex": 500000, "betty": 600005}})
    )
    # carol's running job names her id though the file lost it; dave's clashes with betty's.
    table = HostUids.load(
        tmp_path,
        UidRange.parse("600000-665535"),
        {"betty": 600009, "carol": 600007, "dave": 600005},
    )
    assert table.known("alex") is None  # outside the new range: a new id at her next start
    assert table.known("betty") == 600005  # the file wins over a record
    assert table.known("carol") == 600007
    assert table.known("dave") is None
    stored = json.loads((tmp_path / UIDS_NAME).read_text())
    assert stored["owners"] == {"betty": 600005, "carol": 600007}


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"owners": []}',
        '{"owners": {"alex": "600000"}}',
        '{"owners": {"alex": 600000, "betty": 600000}}',
    ],
)
def test_a_damaged_table_is_refused_at_start_up(tmp_path: Path, text: str) -> None:
    (tmp_path / UIDS_NAME).write_text(text)
    with pytest.raises(SetupError, match="is not a table of owners' host uids"):
        HostUids.load(tmp_path, DEFAULT_RANGE)
