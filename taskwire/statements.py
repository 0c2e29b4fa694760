"""The store's SQL, built once at import as SQLAlchemy Core constructs with bind parameters,
so a call costs no statement construction and no cache-key generation. Every transition is one
conditional UPDATE ... RETURNING whose WHERE is the rule that makes it legal."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from taskwire.db import UtcDateTime, tasks
from taskwire.models import TaskStatus

PENDING = TaskStatus.PENDING.value
_PROCESSING = TaskStatus.PROCESSING.value
_FAILED = TaskStatus.FAILED.value
_CANCELLED = TaskStatus.CANCELLED.value

# The columns of a Task snapshot; _task() reads them by position.
_SNAPSHOT = (
    tasks.c.id,
    tasks.c.status,
    tasks.c.input_data,
    tasks.c.result,
    tasks.c.error,
    tasks.c.attempts,
    tasks.c.version,
    tasks.c.created_at,
    tasks.c.updated_at,
    tasks.c.started_at,
    tasks.c.finished_at,
    tasks.c.attempt_limit,
    tasks.c.owner,
)


def _param(name: str) -> sa.BindParameter[Any]:
    return sa.bindparam(name)


def _time(name: str) -> sa.BindParameter[datetime]:
    return sa.bindparam(name, type_=UtcDateTime())


def _text(sql_literal: str) -> sa.ColumnElement[str]:
    # Inlined rather than bound: asyncpg cannot type a parameter that is only concatenated.
    return sa.literal_column(f"'{sql_literal}'", sa.Text())


NOW = "p_now"
_LEASE_EXPIRED = sa.and_(tasks.c.status == _PROCESSING, tasks.c.lease_expires_at < _time(NOW))
_CURRENT_ATTEMPT = sa.and_(
    tasks.c.id == _param("p_id"),
    tasks.c.status == _PROCESSING,
    tasks.c.attempts == _param("p_attempt"),
)
# Every state change bumps the version: caches and subscribers order snapshots by it.
_NEXT_VERSION: Mapping[str, Any] = {"version": tasks.c.version + 1, "updated_at": _time(NOW)}
_NO_LEASE: Mapping[str, Any] = {"lease_owner": None, "lease_expires_at": None}

# Without a key ON CONFLICT never fires (NULLs are distinct), so one statement serves both cases.
# RETURNING yields the id only when the row went in.
INSERTS: Mapping[str, sa.Executable] = {
    name: dialect_insert(tasks)
    .on_conflict_do_nothing(index_elements=[tasks.c.owner, tasks.c.idempotency_key])
    .returning(tasks.c.id)
    for name, dialect_insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
GET = sa.select(*_SNAPSHOT).where(tasks.c.id == _param("p_id"))
GET_BY_KEY = sa.select(*_SNAPSHOT).where(
    tasks.c.owner == _param("p_owner"), tasks.c.idempotency_key == _param("p_key")
)

# Whether the task may have another attempt. The store keeps every PENDING task within its
# budget (create and retry give at least one attempt, release refunds the one handed back,
# retry_later of the last attempt fails the task instead), so only a PROCESSING task whose
# worker was lost can run out: its claim gives it up (PROCESSING -> FAILED) in the same
# statement, and two claimers can never both see budget left. SET expressions all read the row
# as it was before the UPDATE (PostgreSQL and SQLite alike).
_HAS_BUDGET = tasks.c.attempts < tasks.c.attempt_limit


def _by_budget(another_attempt: Any, no_more: Any) -> sa.Case[Any]:
    return sa.case((_HAS_BUDGET, another_attempt), else_=no_more)


_GIVE_UP_ERROR = (
    _text("Gave up after ")
    + sa.cast(tasks.c.attempts, sa.Text())
    # The processor cannot report its own death (kill -9, OOM) or freeze: the lease says it.
    + _text(" attempts: the worker running it was lost.")
)


def _claim(which: sa.ColumnElement[bool]) -> sa.Update:
    return (
        sa.update(tasks)
        .where(which, sa.or_(sa.and_(tasks.c.status == PENDING, _HAS_BUDGET), _LEASE_EXPIRED))
        .values(
            **_NEXT_VERSION,
            status=_by_budget(_PROCESSING, _FAILED),
            attempts=_by_budget(tasks.c.attempts + 1, tasks.c.attempts),
            started_at=_by_budget(_time(NOW), tasks.c.started_at),
            finished_at=_by_budget(sa.null(), _time(NOW)),
            error=_by_budget(tasks.c.error, _GIVE_UP_ERROR),
            lease_owner=_by_budget(sa.bindparam("p_worker", type_=sa.String()), sa.null()),
            lease_expires_at=_by_budget(_time("p_lease_until"), sa.null()),
            # The dispatcher has nothing to do for this task until the lease lapses (nor ever,
            # once it is FAILED: the dispatcher only looks at PENDING and PROCESSING tasks).
            dispatch_after=_by_budget(_time("p_lease_until"), tasks.c.dispatch_after),
        )
        .returning(*_SNAPSHOT)
    )


CLAIM = _claim(tasks.c.id == _param("p_id"))

FINISH = (
    sa.update(tasks)
    .where(_CURRENT_ATTEMPT)
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=_param("p_status"),
        result=_param("p_result"),
        error=_param("p_error"),
        finished_at=_time(NOW),
    )
    .returning(*_SNAPSHOT)
)
# The last attempt cannot be retried: it fails the task instead (PROCESSING -> FAILED, with the
# same error), so that no PENDING task is ever left without an attempt to run.
RETRY_LATER = (
    sa.update(tasks)
    .where(_CURRENT_ATTEMPT)
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=_by_budget(PENDING, _FAILED),
        error=_param("p_error"),
        finished_at=_by_budget(sa.null(), _time(NOW)),
        dispatch_after=_by_budget(_time("p_dispatch_after"), tasks.c.dispatch_after),
    )
    .returning(*_SNAPSHOT)
)
RELEASE = (
    sa.update(tasks)
    .where(_CURRENT_ATTEMPT)
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=PENDING,
        # A handed-back attempt did not fail: give it back to the budget, so that a graceful
        # shutdown never turns into "gave up". attempts still grows: it is the fence.
        attempt_limit=tasks.c.attempt_limit + 1,
        # Due at once: the dispatcher republishes it on its next round.
        dispatch_after=_time(NOW),
    )
    .returning(*_SNAPSHOT)
)
CANCEL = (
    sa.update(tasks)
    .where(tasks.c.id == _param("p_id"), tasks.c.status == PENDING)
    .values(**_NEXT_VERSION, status=_CANCELLED, finished_at=_time(NOW))
    .returning(*_SNAPSHOT)
)
# started_at is kept: it says when the last attempt began until the next claim overwrites it.
RETRY = (
    sa.update(tasks)
    .where(tasks.c.id == _param("p_id"), tasks.c.status == _FAILED)
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=PENDING,
        attempt_limit=tasks.c.attempts + sa.bindparam("p_extra", type_=sa.Integer()),
        result=None,
        error=None,
        finished_at=None,
        dispatch_after=_time("p_dispatch_after"),
    )
    .returning(*_SNAPSHOT)
)
# Not a state change (the snapshot is the same), so neither version nor updated_at move.
HEARTBEAT = (
    sa.update(tasks)
    .where(_CURRENT_ATTEMPT)
    .values(lease_expires_at=_time("p_lease_until"), dispatch_after=_time("p_lease_until"))
    .returning(tasks.c.id)
)
# Also not a state change. Only a task waiting for dispatch (claimable) is deferred: one claimed
# before its publish was even confirmed keeps its deadline at its lease expiry.
DEFER = (
    sa.update(tasks)
    .where(tasks.c.id == _param("p_id"), sa.or_(tasks.c.status == PENDING, _LEASE_EXPIRED))
    .values(dispatch_after=_time("p_dispatch_after"))
)
# An expired lease counts only once its dispatch deadline passed too (claim and heartbeat keep
# the deadline at the lease expiry): pushing the deadline is what keeps a takeover from being
# republished on every round, and what PostgreSQL re-checks when a row changed under a concurrent
# dispatcher's snapshot, so two dispatchers never return the same id.
_DUE = (
    sa.select(tasks.c.id)
    .where(
        tasks.c.dispatch_after <= _time(NOW),
        sa.or_(tasks.c.status == PENDING, _LEASE_EXPIRED),
    )
    .order_by(tasks.c.dispatch_after)
    .limit(_param("p_limit"))
    # Rendered on PostgreSQL only; SQLite runs one writer at a time anyway.
    .with_for_update(skip_locked=True)
)
DISPATCH = (
    sa.update(tasks)
    .where(tasks.c.id.in_(_DUE.scalar_subquery()))
    .values(dispatch_after=_time("p_dispatch_after"))
    .returning(tasks.c.id)
)
PING = sa.select(sa.literal(1))

# Batched forms for PostgreSQL (taskwire.batching): one statement for many tasks, each row as
# legal as it would be on its own. Callers never put one task twice in a batch.
CLAIM_MANY = _claim(tasks.c.id == sa.any_(sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.Uuid()))))
_COMPLETIONS = (
    sa.func.unnest(
        sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.Uuid())),
        sa.bindparam("p_attempts", type_=postgresql.ARRAY(sa.Integer())),
        sa.bindparam("p_results", type_=postgresql.ARRAY(sa.Text())),
    )
    .table_valued("id", "attempt", "result")
    .render_derived(name="done")
)
COMPLETE_MANY = (
    sa.update(tasks)
    .where(
        tasks.c.id == _COMPLETIONS.c.id,
        tasks.c.status == _PROCESSING,
        tasks.c.attempts == _COMPLETIONS.c.attempt,
    )
    .values(
        **_NEXT_VERSION,
        **_NO_LEASE,
        status=TaskStatus.COMPLETED.value,
        result=_COMPLETIONS.c.result,
        error=None,
        finished_at=_time(NOW),
    )
    .returning(*_SNAPSHOT)
)
_FRESH = (
    sa.func.unnest(
        sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.Uuid())),
        sa.bindparam("p_inputs", type_=postgresql.ARRAY(sa.Text())),
        sa.bindparam("p_attempt_limits", type_=postgresql.ARRAY(sa.Integer())),
        sa.bindparam("p_created", type_=postgresql.ARRAY(sa.DateTime(timezone=True))),
        sa.bindparam("p_dispatch_after", type_=postgresql.ARRAY(sa.DateTime(timezone=True))),
        sa.bindparam("p_keys", type_=postgresql.ARRAY(sa.String())),
        sa.bindparam("p_owners", type_=postgresql.ARRAY(sa.String())),
    )
    .table_valued(
        "id", "input_data", "attempt_limit", "created_at", "dispatch_after", "key", "owner"
    )
    .render_derived(name="fresh")
)
# As INSERTS, for many rows: RETURNING names the ids that went in; the others met a taken key.
INSERT_MANY = (
    postgresql.insert(tasks)
    .from_select(
        [
            tasks.c.id,
            tasks.c.status,
            tasks.c.input_data,
            tasks.c.attempts,
            tasks.c.attempt_limit,
            tasks.c.version,
            tasks.c.created_at,
            tasks.c.updated_at,
            tasks.c.dispatch_after,
            tasks.c.idempotency_key,
            tasks.c.owner,
        ],
        sa.select(
            _FRESH.c.id,
            sa.literal(PENDING),
            _FRESH.c.input_data,
            sa.literal(0),
            _FRESH.c.attempt_limit,
            sa.literal(1),
            _FRESH.c.created_at,
            _FRESH.c.created_at,
            _FRESH.c.dispatch_after,
            _FRESH.c.key,
            _FRESH.c.owner,
        ),
    )
    .on_conflict_do_nothing(index_elements=[tasks.c.owner, tasks.c.idempotency_key])
    .returning(tasks.c.id)
)
_DEFERRALS = (
    sa.func.unnest(
        sa.bindparam("p_ids", type_=postgresql.ARRAY(sa.Uuid())),
        sa.bindparam("p_dispatch_after", type_=postgresql.ARRAY(sa.DateTime(timezone=True))),
    )
    .table_valued("id", "dispatch_after")
    .render_derived(name="deferred")
)
DEFER_MANY = (
    sa.update(tasks)
    .where(tasks.c.id == _DEFERRALS.c.id, sa.or_(tasks.c.status == PENDING, _LEASE_EXPIRED))
    .values(dispatch_after=_DEFERRALS.c.dispatch_after)
)

# Operators' counts (queueStats, `taskwire status`): tasks of every owner by status, and the
# oldest PENDING one's creation, in one pass. The (status, dispatch_after) index keeps the
# grouping cheap; no index of its own on purpose (every write would pay for it).
STATS = sa.select(
    tasks.c.status,
    sa.func.count(),
    sa.func.min(tasks.c.created_at).filter(tasks.c.status == PENDING),
).group_by(tasks.c.status)
