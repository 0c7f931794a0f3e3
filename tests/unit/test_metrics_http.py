"""The metrics endpoint (`jobworker.server.metrics_http`): GET /metrics answers the
registry's text exposition, anything else a short error, and a hostile client is
bounded (request size, connections at once) before any work."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from jobworker.errors import SetupError
from jobworker.metrics import Metrics, end_outcome
from jobworker.model import Outcome
from jobworker.server import metrics_http
from jobworker.server.metrics_http import MAX_REQUEST, serve_metrics


async def _request(port: int, raw: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        answer = bytearray()
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    return bytes(answer)


def _split(answer: bytes) -> tuple[str, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return head.decode(), body


async def test_get_metrics_serves_every_family_of_the_registry(nursery: trio.Nursery) -> None:
    metrics = Metrics()
    metrics.job_ends.labels(outcome="oom_killed").inc()
    port = await nursery.start(serve_metrics, "127.0.0.1", 0, metrics.registry)
    head, body = _split(await _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert head.startswith("HTTP/1.1 200 OK")
    assert "Content-Type: text/plain; version=0.0.4" in head
    assert f"Content-Length: {len(body)}" in head
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {"jobworker_job_ends", "jobworker_build_info", "jobworker_rpcs"} <= set(families)
    ends = {s.labels["outcome"]: s.value for s in families["jobworker_job_ends"].samples}
    assert ends["oom_killed"] == 1 and ends["exit_zero"] == 0


async def test_the_live_levels_are_computed_at_each_scrape(nursery: trio.Nursery) -> None:
    """A level added with add_live is what its owner says at the scrape, not a copy."""
    metrics = Metrics()
    level = [3]
    metrics.add_live(lambda: [GaugeMetricFamily("jobworker_test_level", "a level", value=level[0])])
    port = await nursery.start(serve_metrics, "127.0.0.1", 0, metrics.registry)
    for expected in (3, 7):
        level[0] = expected
        _, body = _split(await _request(port, b"GET /metrics HTTP/1.0\r\n\r\n"))
        assert f"jobworker_test_level {expected}.0" in body.decode()


async def test_other_paths_and_methods_get_404_and_405(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_metrics, "127.0.0.1", 0, Metrics().registry)
    head, _ = _split(await _request(port, b"GET / HTTP/1.1\r\n\r\n"))
    assert head.startswith("HTTP/1.1 404")
    head, _ = _split(await _request(port, b"POST /metrics HTTP/1.1\r\n\r\n"))
    assert head.startswith("HTTP/1.1 405") and "Allow: GET, HEAD" in head
    head, body = _split(await _request(port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
    assert head.startswith("HTTP/1.1 200") and body == b""
    head, _ = _split(await _request(port, b"nonsense\r\n\r\n"))
    assert head.startswith("HTTP/1.1 400")


async def test_a_request_past_the_size_bound_gets_400_without_reading_more(
    nursery: trio.Nursery,
) -> None:
    port = await nursery.start(serve_metrics, "127.0.0.1", 0, Metrics().registry)
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST * 4)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(huge[: MAX_REQUEST + 100])
        with trio.fail_after(10):
            answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 400")


async def test_a_silent_client_is_closed_after_the_request_timeout(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_http, "REQUEST_TIMEOUT", 0.2)
    port = await nursery.start(serve_metrics, "127.0.0.1", 0, Metrics().registry)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(5):
            assert await stream.receive_some(100) == b""  # closed, unanswered


async def test_connections_past_the_bound_are_closed_at_once(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MAX_CONNECTIONS silent clients hold every slot: one more is closed unanswered,
    while the server still serves once a slot is free."""
    monkeypatch.setattr(metrics_http, "MAX_CONNECTIONS", 2)
    port = await nursery.start(serve_metrics, "127.0.0.1", 0, Metrics().registry)
    holders = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
    await trio.testing.wait_all_tasks_blocked(0.05)
    extra = await trio.open_tcp_stream("127.0.0.1", port)
    async with extra:
        with trio.fail_after(5):
            assert await extra.receive_some(100) == b""
    for holder in holders:
        await holder.aclose()
    await trio.testing.wait_all_tasks_blocked(0.05)
    head, _ = _split(await _request(port, b"GET /metrics HTTP/1.1\r\n\r\n"))
    assert head.startswith("HTTP/1.1 200")


async def test_a_taken_port_is_a_setup_error_naming_the_flag(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_metrics, "127.0.0.1", 0, Metrics().registry)
    with pytest.raises(SetupError, match="--metrics-addr"):
        await serve_metrics("127.0.0.1", port, Metrics().registry)


def test_outcomes_map_to_the_end_labels() -> None:
    assert end_outcome(Outcome.EXITED, 0) == "exit_zero"
    assert end_outcome(Outcome.EXITED, 3) == "exit_nonzero"
    assert end_outcome(Outcome.OOM_KILLED, 137) == "oom_killed"
    assert end_outcome(Outcome.TIMED_OUT, 143) == "timed_out"
    assert end_outcome(Outcome.SIGNALED, 137) == "signaled"
    assert end_outcome(Outcome.STOPPED, 143) == "stopped"
    assert end_outcome(Outcome.LOST, None) == "lost"
