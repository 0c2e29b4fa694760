"""The realtime scenarios' arithmetic, without servers: notification latency from a task's
finishedAt, what a subscription's messages mean, how subscriptions are laid out over tasks,
connections and load processes, memory per subscription and queries per finished task."""

from __future__ import annotations

import fnmatch
import os
import resource
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest

from bench import memory, notify, push_poll, scale_out
from bench.model import Measurement
from bench.ws_client import Watch, channel_pattern, epoch_seconds, notify_latency_ms, summarize
from bench.ws_load import chunks, spread
from bench.ws_parent import open_files_limit, processes_for, split
from taskwire.redis_events import RedisEventBus

FINISHED = datetime(2026, 1, 2, 3, 4, 5, 250_000, tzinfo=UTC)
# Epoch seconds are ~1.8e9: a float holds them to about 0.2 us, so milliseconds match to 1e-3.
MS = 1e-3


def event(status: str, finished_at: datetime | None = None) -> dict[str, Any]:
    """A graphql-transport-ws `next` payload as the API sends it."""
    return {
        "data": {
            "taskUpdated": {
                "id": "t",
                "status": status,
                "version": 1,
                "finishedAt": finished_at.isoformat() if finished_at else None,
            }
        }
    }


# notification latency


def test_epoch_seconds_reads_the_offset() -> None:
    in_paris = FINISHED.astimezone(timezone(timedelta(hours=1))).isoformat()
    assert epoch_seconds(in_paris) == FINISHED.timestamp()
    assert epoch_seconds("2026-01-02T03:04:05.25Z") == FINISHED.timestamp()


def test_notify_latency_is_receipt_minus_finished_at_in_ms() -> None:
    received = FINISHED.timestamp() + 0.0125
    assert notify_latency_ms(received, FINISHED.isoformat()) == pytest.approx(12.5, abs=MS)


def test_a_completed_event_after_a_live_state_is_a_sample() -> None:
    watch = Watch("t")
    watch.take(FINISHED.timestamp() - 1, event("PENDING"))
    watch.take(FINISHED.timestamp() - 0.5, event("PROCESSING"))
    watch.take(FINISHED.timestamp() + 0.004, event("COMPLETED", FINISHED))
    assert watch.pushed
    assert watch.latency_ms() == pytest.approx(4.0, abs=MS)
    assert watch.messages == 3


def test_a_final_state_in_the_first_message_is_late_not_a_sample() -> None:
    # A subscriber that came after COMPLETED gets it as the snapshot: not a notification.
    watch = Watch("t")
    watch.take(FINISHED.timestamp() + 5, event("COMPLETED", FINISHED))
    assert watch.finished
    assert not watch.pushed
    assert watch.latency_ms() is None


def test_only_completed_counts_and_later_finals_do_not_move_the_receipt() -> None:
    failed = Watch("t")
    failed.take(1.0, event("PROCESSING"))
    failed.take(2.0, event("FAILED", FINISHED))
    assert failed.pushed
    assert failed.latency_ms() is None

    repeated = Watch("t")
    repeated.take(1.0, event("PENDING"))
    repeated.take(FINISHED.timestamp() + 0.002, event("COMPLETED", FINISHED))
    repeated.take(FINISHED.timestamp() + 9, event("COMPLETED", FINISHED))
    assert repeated.latency_ms() == pytest.approx(2.0, abs=MS)


def test_an_error_payload_is_kept_and_is_no_state() -> None:
    watch = Watch("t")
    watch.take(1.0, {"data": None, "errors": [{"message": "The database is unavailable."}]})
    assert "database is unavailable" in watch.error
    assert watch.first_status is None
    assert not watch.started


def test_summarize_counts_each_outcome_once() -> None:
    pushed = Watch("a")
    pushed.take(1.0, event("PENDING"))
    pushed.take(FINISHED.timestamp() + 0.003, event("COMPLETED", FINISHED))
    late = Watch("b")
    late.take(1.0, event("COMPLETED", FINISHED))
    lost = Watch("c", error="connection closed", ended=True)
    lost.take(1.0, event("PROCESSING"))
    summary = summarize([pushed, late, lost])
    assert summary["subscriptions"] == 3
    assert (summary["completed"], summary["pushed"], summary["late"]) == (2, 1, 1)
    assert (summary["missing"], summary["errors"]) == (1, 1)
    assert summary["first_error"] == "connection closed"
    assert summary["latencies_ms"] == [pytest.approx(3.0, abs=MS)]


# layout: subscriptions over tasks, connections and load processes


def test_spread_gives_each_task_its_share_round_robin() -> None:
    assert spread(["a", "b", "c"], 2) == ["a", "b", "c", "a", "b", "c"]
    ten_per_task = spread([str(n) for n in range(1_000)], 10)
    assert len(ten_per_task) == 10_000
    first_connection = chunks(ten_per_task, 100)[0]
    assert len(set(first_connection)) == 100  # one connection watches 100 different tasks


def test_chunks_cover_everything_in_order() -> None:
    assert chunks(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert [len(part) for part in chunks(list(range(10_000)), 1)] == [1] * 10_000
    with pytest.raises(ValueError, match="at least 1"):
        chunks([1], 0)


def test_split_shares_differ_by_at_most_one() -> None:
    shares = split(list(range(1_001)), 2)
    assert [len(share) for share in shares] == [501, 500]
    assert shares[0] + shares[1] == list(range(1_001))
    assert split([1], 3) == [[1], [], []]
    with pytest.raises(ValueError, match="at least 1"):
        split([1], 0)


def test_load_processes_per_subscriptions() -> None:
    assert [processes_for(n) for n in (1, 1_000, 5_000, 5_001, 10_000)] == [1, 1, 1, 2, 2]


def test_notify_paces_the_completions_over_the_budget() -> None:
    # 1,000 tasks in 10 s at 0.1 s each: 10 at a time.
    assert notify.pace(1_000, 10.0, 0.1) == 10
    assert notify.pace(1, 10.0, 0.1) == 1
    assert notify.pace(1_000, 1.0, 0.1) == 100


def test_the_probe_pattern_matches_the_products_channels() -> None:
    bus = RedisEventBus("redis://127.0.0.1:1/0", prefix="taskwire-bench-x")  # no I/O
    channel = bus.channel(uuid4()).decode()
    assert fnmatch.fnmatchcase(channel, channel_pattern("taskwire-bench-x"))
    assert not fnmatch.fnmatchcase(channel, channel_pattern("taskwire-bench-y"))


def test_open_files_limit_reads_the_soft_limit() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    expected = -1 if soft == resource.RLIM_INFINITY else soft
    assert open_files_limit(os.getpid()) == expected


# memory per subscription


def test_kib_per_subscription() -> None:
    assert memory.kib_per_subscription(100_000.0, 300_000.0, 10_000) == 20.0
    with pytest.raises(ValueError, match="no subscriptions"):
        memory.kib_per_subscription(1.0, 2.0, 0)


def test_memory_check_reads_each_layout() -> None:
    medians = {
        name: Measurement(name, None, extra={"kib_per_subscription": figure})
        for name, figure in zip(memory.LAYOUTS, (55.0, 19.5), strict=True)
    }
    assert list(memory.check(medians).values()) == [False, True]
    assert not any(memory.check({}).values())


# queries per finished task


def test_per_task_subtracts_the_measurings_own() -> None:
    assert push_poll.per_task(4_150, 150, 1_000) == 4.0
    with pytest.raises(ValueError, match="no tasks"):
        push_poll.per_task(1, 0, 0)


def test_push_share_of_polling() -> None:
    assert push_poll.share(0.05, 5.0) == pytest.approx(0.01)
    assert push_poll.share(-0.01, 5.0) == 0.0  # noise below the idle run is no saving
    assert push_poll.share(0.0, 0.001) is None  # polling's own count is noise
    assert push_poll.push_is_cheap(0.05, 5.0)
    assert not push_poll.push_is_cheap(0.06, 5.0)
    # Polling needs nothing beyond the work (its reads hit the cache): push must need nothing.
    assert push_poll.push_is_cheap(0.003, 0.002)
    assert not push_poll.push_is_cheap(0.2, 0.002)


def test_redis_calls_leave_out_the_measuring_and_keepalives() -> None:
    stats: Mapping[str, Any] = {
        "cmdstat_get": {"calls": 10, "usec": 5},
        "cmdstat_evalsha": {"calls": 3},
        "cmdstat_info": {"calls": 7},
        "cmdstat_ping": {"calls": 2},
    }
    assert push_poll.redis_calls(stats) == 13


def test_push_poll_check_compares_the_extra_queries() -> None:
    def measured(name: str, extra_queries: float) -> Measurement:
        return Measurement(name, None, extra={"db_queries_per_task": extra_queries})

    cheap = {push_poll.PUSH: measured(push_poll.PUSH, 0.01), push_poll.POLL: measured("", 3.0)}
    costly = {push_poll.PUSH: measured(push_poll.PUSH, 0.5), push_poll.POLL: measured("", 3.0)}
    assert push_poll.check(cheap) == {push_poll.PUSH: True}
    assert push_poll.check(costly) == {push_poll.PUSH: False}
    assert push_poll.check({}) == {push_poll.PUSH: False}


# the checks of notify and scale-out


def test_notify_check_is_the_p99_per_size() -> None:
    fast = tuple(float(n % 10) for n in range(1_000))  # p99 9 ms
    slow = (*fast[:-20], *(300.0,) * 20)  # p99 300 ms
    medians = {
        "notify@1000": Measurement("notify@1000", None, latencies_ms=fast),
        "notify@10000": Measurement("notify@10000", None, latencies_ms=slow),
    }
    assert notify.check(medians) == {"notify@1000": True, "notify@10000": False}


def test_scale_out_all_arrived() -> None:
    counts = {
        "created": 10.0,
        "completed": 10.0,
        "missing": 0.0,
        "errors": 0.0,
        "client_errors": 0.0,
    }
    assert scale_out.all_arrived(counts)
    assert not scale_out.all_arrived({**counts, "completed": 9.0, "missing": 1.0})
    assert not scale_out.all_arrived({**counts, "created": 0.0, "completed": 0.0})
    assert not scale_out.all_arrived({**counts, "client_errors": 1.0})
