"""The worker: claims ready steps in batches, runs them, records results in batches.

Claims and completions each take one round trip for many steps (DESIGN §2 hot-path
discipline). While one batch of results is being recorded the next one accumulates, so the
batch size adapts to the load by itself. A completion that makes new steps ready claims them
for this worker in the same transaction, so a chain of steps never waits on NOTIFY.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import structlog

from maestro.db.queries import sql
from maestro.engine.compiled import CompiledStep, WorkflowCache
from maestro.engine.retry import ErrorClass, StepError, next_retry_delay
from maestro.engine.steps import (
    BUILTIN_HANDLERS,
    Handler,
    StepContext,
    Suspend,
)
from maestro.engine.templating import TemplateRenderError, is_truthy
from maestro.secrets import scrub, scrub_json

log = structlog.get_logger("maestro.worker")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    concurrency: int = 64
    claim_batch_size: int = 64
    lease_seconds: float = 30.0
    poll_interval_seconds: float = 1.0
    shutdown_grace_seconds: float = 30.0
    worker_id: str | None = None


@dataclass(slots=True)
class _Outcome:
    id: int
    attempt: int
    outcome: str  # succeeded | skipped | retry | defer | dead | suspend
    output: Any = None
    error: dict[str, Any] | None = None
    run_at: datetime | None = None
    state: dict[str, Any] | None = None
    duration_ms: float = 0.0
    error_json: str | None = None
    state_json: str | None = None
    input_sha256: str | None = None
    output_sha256: str | None = None


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _encode(outcome: _Outcome, secrets: frozenset[str] = frozenset()) -> None:
    """Serialize JSON once, here: a value that is not JSON fails its step, not the batch.
    Secret values a connector resolved never leave the worker: they are scrubbed first."""
    if secrets:
        outcome.output = scrub_json(outcome.output, secrets)
        outcome.error = scrub_json(outcome.error, secrets)
    try:
        if outcome.output is not None:
            canonical = _canonical(outcome.output)
            outcome.output = canonical.decode()
            outcome.output_sha256 = hashlib.sha256(canonical).hexdigest()
        if outcome.state is not None:
            outcome.state_json = orjson.dumps(outcome.state).decode()
    except TypeError as exc:
        outcome.outcome, outcome.output, outcome.state = "dead", None, None
        outcome.output_sha256 = None
        outcome.error = {"class": "internal", "message": f"the step's result is not JSON: {exc}"}
    if outcome.error is not None:
        outcome.error_json = orjson.dumps(outcome.error).decode()


class _RetryPolicy:
    __slots__ = ("initial_delay_seconds", "max_attempts", "max_delay_seconds")

    def __init__(self, step: CompiledStep) -> None:
        self.max_attempts = step.max_attempts
        self.initial_delay_seconds = step.initial_delay_seconds
        self.max_delay_seconds = step.max_delay_seconds


def _transient(exc: asyncpg.PostgresError) -> bool:
    # Connection trouble, rollbacks (serialization, deadlock), shutdowns, exhausted resources.
    return str(getattr(exc, "sqlstate", "") or "")[:2] in {"08", "40", "53", "57", "58"}


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        config: WorkerConfig,
        handlers: Mapping[str, Handler] | None = None,
        secret_values: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        self._pool = pool
        self._dsn = dsn
        self._config = config
        self._handlers = dict(BUILTIN_HANDLERS if handlers is None else handlers)
        # The secret values resolved so far (to scrub from outputs, errors and logs).
        self._secret_values = secret_values or frozenset
        self.worker_id = config.worker_id or default_worker_id()
        self._cache = WorkflowCache(self._load_version)
        self._inflight: dict[int, tuple[asyncio.Task[None], Any]] = {}
        self._lost: set[int] = set()
        self._results: list[_Outcome] = []
        self._results_ready = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._next_due: float | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._listener: asyncpg.Connection | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()
        self.steps_finished = 0

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self._listen()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="maestro-claim"),
            asyncio.create_task(self._flush_loop(), name="maestro-flush"),
            asyncio.create_task(self._heartbeat_loop(), name="maestro-heartbeat"),
            asyncio.create_task(self._reaper_loop(), name="maestro-reaper"),
        ]
        self.ready.set()
        log.info("worker_started", worker_id=self.worker_id, concurrency=self._config.concurrency)

    async def run(self) -> None:
        """Run until :meth:`stop` is called (e.g. from a signal handler)."""
        await self.start()
        await self._stopping.wait()
        await self.shutdown()

    async def _listen(self) -> None:
        self._listener = await asyncpg.connect(self._dsn)
        await self._listener.add_listener("maestro_steps", self._on_notify)
        await self._listener.add_listener("maestro_execution_finished", self._on_finished)

    async def _ensure_listening(self) -> None:
        """Reconnect LISTEN after the database went away; until then polling covers us."""
        if self._listener is None or self._listener.is_closed():
            await self._listen()
            self._wake.set()
            log.info("worker_listening_again")

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def shutdown(self) -> None:
        """Stop claiming, let in-flight steps finish within the grace period, release the rest."""
        self._stopping.set()
        self._wake.set()
        self._slot_free.set()
        deadline = time.monotonic() + self._config.shutdown_grace_seconds
        claim = self._loops[0] if self._loops else None
        if claim is not None:
            # Let a claim under way finish: the rows it took are ours to run or release.
            await asyncio.wait([claim], timeout=max(0.1, deadline - time.monotonic()))
            claim.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claim
        # A flush that began before the stop may have claimed the next steps of chains; once
        # it is done no step can start any more (later flushes claim nothing).
        async with self._flush_lock:
            pass
        if self._inflight:
            log.info("worker_draining", in_flight=len(self._inflight))
        while self._inflight and (remaining := deadline - time.monotonic()) > 0:
            await asyncio.wait([t for t, _ in self._inflight.values()], timeout=remaining)
        unfinished = list(self._inflight)
        if unfinished:
            tasks = [self._inflight[sid][0] for sid in unfinished]
            for sid, task in zip(unfinished, tasks, strict=True):
                self._lost.add(sid)
                task.cancel()
            await asyncio.wait(tasks)
            async with self._pool.acquire() as conn:
                released = await conn.fetch(sql("release_steps"), self.worker_id, unfinished)
                await conn.execute(sql("notify_steps"))
            log.info("worker_released_steps", released=len(released))
        # Record what finished (waiting for a flush already under way), then stop the loops.
        for _ in range(5):
            async with self._flush_lock:  # wait for a flush already under way
                if not self._results:
                    break
            try:
                await self._flush_once(claim_limit=0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                # Unrecorded results are not lost: their leases expire and the steps rerun.
                log.warning(
                    "complete_failed_at_shutdown", error=str(exc), pending=len(self._results)
                )
                await asyncio.sleep(0.5)
        for task in self._loops[1:]:
            task.cancel()
        for task in self._loops[1:]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._listener is not None:
            await self._listener.close()
        log.info("worker_stopped", worker_id=self.worker_id, steps_finished=self.steps_finished)

    # ----------------------------------------------------------------- notifications

    def _on_notify(self, *_: Any) -> None:
        self._wake.set()

    def _on_finished(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        # A cancelled execution may have steps running here: check our leases now.
        if any(str(ctx.execution_id) == payload for _, ctx in self._inflight.values()):
            task = asyncio.get_running_loop().create_task(self._heartbeat_once())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # ----------------------------------------------------------------- claiming

    async def _claim_loop(self) -> None:
        cfg = self._config
        while not self._stopping.is_set():
            free = cfg.concurrency - len(self._inflight)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            self._wake.clear()
            want = min(free, cfg.claim_batch_size)
            try:
                async with self._pool.acquire() as conn:
                    rows = await conn.fetch(
                        sql("claim_steps"), self.worker_id, want, cfg.lease_seconds
                    )
            except Exception as exc:  # the loop must outlive any failure; it retries
                log.warning("claim_failed", error=repr(exc))
                await self._sleep_or_wake(cfg.poll_interval_seconds)
                continue
            for row in rows:
                self._start_step(row)
            if len(rows) < want:
                await self._sleep_or_wake(self._idle_timeout())

    def _idle_timeout(self) -> float:
        timeout = self._config.poll_interval_seconds
        if self._next_due is not None:
            until_due = self._next_due - time.monotonic()
            if until_due <= timeout:
                self._next_due = None
                timeout = max(until_due, 0.0)
        return timeout

    def _wake_at(self, due: float) -> None:
        """Claim again at ``due`` (monotonic): a retry or a delay of ours comes due then,
        sooner than the next poll, and nothing will NOTIFY about it."""
        if self._next_due is None or due < self._next_due:
            self._next_due = due
        self._wake.set()

    async def _sleep_or_wake(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    def _start_step(self, row: asyncpg.Record) -> None:
        ctx = StepContext(
            tenant=row["tenant_id"],
            execution_id=row["execution_id"],
            workflow_id=row["workflow_id"],
            step_id=row["step_id"],
            step_type=row["step_type"],
            attempt=row["attempts"],
            correlation_id=row["correlation_id"],
            state=row["state"],
        )
        task = asyncio.create_task(self._run_step(row, ctx))
        self._inflight[row["id"]] = (task, ctx)

    # ----------------------------------------------------------------- running

    async def _run_step(self, row: asyncpg.Record, ctx: StepContext) -> None:
        structlog.contextvars.bind_contextvars(
            tenant=ctx.tenant,
            execution_id=str(ctx.execution_id),
            step_id=ctx.step_id,
            correlation_id=ctx.correlation_id,
        )
        started = time.perf_counter()
        outcome: _Outcome | None = None
        step: CompiledStep | None = None
        input_digest: list[str] = []
        try:
            workflow = await self._cache.get(ctx.tenant, ctx.workflow_id, row["workflow_version"])
            step = workflow.steps[ctx.step_id]
            outcome = await self._execute(row, ctx, step, input_digest)
        except asyncio.CancelledError:
            # Lost lease, cancelled execution, or shutdown: whoever cancelled us owns the row.
            outcome = None
        except StepError as exc:
            outcome = self._failure(row, step, exc)
        except Exception as exc:  # a bug in a handler must not kill the worker
            secrets = self._secret_values()
            log.error(
                "step_crashed",
                error=scrub(repr(exc), secrets),
                traceback=scrub(traceback.format_exc(), secrets),
            )
            outcome = self._failure(
                row, step, StepError(ErrorClass.INTERNAL, f"{type(exc).__name__}: {exc}")
            )
        finally:
            self._inflight.pop(row["id"], None)
            self._lost.discard(row["id"])
            self._slot_free.set()
        if outcome is not None:
            outcome.duration_ms = (time.perf_counter() - started) * 1000
            outcome.input_sha256 = input_digest[0] if input_digest else None
            _encode(outcome, self._secret_values())
            self._results.append(outcome)
            self._results_ready.set()

    async def _execute(
        self, row: asyncpg.Record, ctx: StepContext, step: CompiledStep, input_digest: list[str]
    ) -> _Outcome:
        handler = self._handlers.get(step.type)
        if handler is None:
            raise StepError(ErrorClass.VALIDATION, f"no handler for step type {step.type!r}")
        context = await self._template_context(row, ctx, step)
        try:
            condition = step.condition
            if (
                condition is not None
                and ctx.state is None
                and not is_truthy(condition.render(context))
            ):
                return _Outcome(row["id"], ctx.attempt, "skipped", output=None)
            config = step.config.render(context)
        except TemplateRenderError as exc:
            raise StepError(ErrorClass.VALIDATION, str(exc)) from None
        # Provenance: the call as rendered, with secret references (values come later).
        input_digest.append(hashlib.sha256(_canonical(config)).hexdigest())
        try:
            async with asyncio.timeout(step.timeout_seconds):
                result = await handler(ctx, config)
        except TimeoutError:
            raise StepError(
                ErrorClass.TIMEOUT, f"step did not finish within {step.timeout_seconds:g}s"
            ) from None
        if isinstance(result, Suspend):
            if result.until is not None:
                self._wake_at(time.monotonic() + (result.until - ctx.now()).total_seconds())
            return _Outcome(
                row["id"],
                ctx.attempt,
                "suspend",
                state=result.state,
                run_at=result.until,  # None: until woken (an approval's decision)
            )
        return _Outcome(row["id"], ctx.attempt, "succeeded", output=result)

    async def _template_context(
        self, row: asyncpg.Record, ctx: StepContext, step: CompiledStep
    ) -> dict[str, Any]:
        steps: dict[str, Any] = {}
        if step.uses_step_outputs:
            async with self._pool.acquire() as conn:
                for r in await conn.fetch(sql("load_step_outputs"), ctx.tenant, ctx.execution_id):
                    steps[r["step_id"]] = {"output": r["output"]}
        return {
            "input": row["input"],
            "trigger": row["trigger"],
            "execution": {
                "id": str(ctx.execution_id),
                "workflowId": str(ctx.workflow_id),
                "workflowVersion": row["workflow_version"],
                "attempt": ctx.attempt,
                "idempotencyKey": ctx.idempotency_key,
                "stepId": ctx.step_id,
            },
            "steps": steps,
        }

    def _failure(self, row: asyncpg.Record, step: CompiledStep | None, exc: StepError) -> _Outcome:
        message = scrub(exc.message, self._secret_values())
        error = {"class": str(exc.error_class), "message": message}
        attempt = row["attempts"]
        if exc.error_class is ErrorClass.CIRCUIT_OPEN and exc.retry_after is not None:
            # Not tried at all: come back when the breaker may close, without using an attempt.
            log.info("step_deferred", message=message, retry_in=exc.retry_after)
            self._wake_at(time.monotonic() + exc.retry_after)
            return _Outcome(
                row["id"],
                attempt,
                "defer",
                error=error,
                run_at=datetime.now(UTC) + timedelta(seconds=exc.retry_after),
            )
        delay = None if step is None else next_retry_delay(_RetryPolicy(step), attempt, exc)
        log.warning(
            "step_failed",
            error_class=str(exc.error_class),
            message=message,
            attempt=attempt,
            retry_in=delay,
        )
        if delay is None:
            return _Outcome(row["id"], attempt, "dead", error=error)
        self._wake_at(time.monotonic() + delay)
        return _Outcome(
            row["id"],
            attempt,
            "retry",
            error=error,
            run_at=datetime.now(UTC) + timedelta(seconds=delay),
        )

    # ----------------------------------------------------------------- recording

    async def _flush_loop(self) -> None:
        while True:
            await self._results_ready.wait()
            self._results_ready.clear()
            while self._results:
                free = self._config.concurrency - len(self._inflight)
                limit = (
                    0
                    if self._stopping.is_set()
                    else max(0, min(free, self._config.claim_batch_size))
                )
                try:
                    await self._flush_once(limit)
                except asyncpg.PostgresError as exc:
                    if _transient(exc):
                        log.warning("complete_failed", error=str(exc))
                        await asyncio.sleep(min(1.0, self._config.lease_seconds / 10))
                    else:
                        await self._isolate_poison(exc)
                except Exception as exc:  # never let the flush loop die: results would stall
                    # Results stay buffered; the lease keeps the steps ours until we retry.
                    log.warning("complete_failed", error=repr(exc))
                    await asyncio.sleep(min(1.0, self._config.lease_seconds / 10))

    async def _isolate_poison(self, exc: asyncpg.PostgresError) -> None:
        """A batch the database refused: record its results one by one, so that one bad
        result fails only its own step (as dead) and never blocks the others."""
        log.error("complete_rejected", error=str(exc))
        async with self._flush_lock:
            pending, self._results = self._results, []
            for i, outcome in enumerate(pending):
                if not await self._record_alone(outcome):
                    self._results[:0] = pending[i:]  # the database is away: retry later
                    return

    async def _record_alone(self, outcome: _Outcome) -> bool:
        """Record one result; False when the database is unavailable (try again later)."""
        try:
            await self._record([outcome], claim_limit=0)
        except asyncpg.PostgresError as exc:
            if _transient(exc):
                return False
            failed = _Outcome(outcome.id, outcome.attempt, "dead")
            failed.error = {"class": "internal", "message": "recording the step's result failed"}
            _encode(failed)
            try:
                await self._record([failed], claim_limit=0)
            except asyncpg.PostgresError as again:
                # Leave the step to lease expiry rather than loop on a poison row.
                log.error("complete_dropped", step_run_id=outcome.id, error=str(again))
        except Exception as exc:  # the connection, not the row: try again later
            log.warning("complete_failed", error=repr(exc))
            return False
        return True

    async def _flush_once(self, claim_limit: int) -> None:
        async with self._flush_lock:
            batch, self._results = self._results, []
            try:
                await self._record(batch, claim_limit)
            except BaseException:
                self._results[:0] = batch
                raise

    async def _record(self, batch: list[_Outcome], claim_limit: int) -> None:
        # One statement, so one transaction by itself: no BEGIN/COMMIT round trips. A chain
        # pays this once per step.
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                sql("complete_steps"),
                self.worker_id,
                [o.id for o in batch],
                [o.attempt for o in batch],
                [o.outcome for o in batch],
                [o.output for o in batch],
                [o.error_json for o in batch],
                [o.run_at for o in batch],
                [o.state_json for o in batch],
                [o.duration_ms for o in batch],
                [o.input_sha256 for o in batch],
                [o.output_sha256 for o in batch],
                claim_limit,
                self._config.lease_seconds,
            )
        self.steps_finished += len(batch)
        for row in rows:
            self._start_step(row)

    # ----------------------------------------------------------------- leases

    async def _heartbeat_loop(self) -> None:
        interval = self._config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat_once()
            except Exception as exc:  # keep heartbeating whatever happened
                log.warning("heartbeat_failed", error=repr(exc))

    async def _heartbeat_once(self) -> None:
        ids = list(self._inflight)
        if not ids:
            return
        async with self._pool.acquire() as conn:
            kept = {
                r["id"]
                for r in await conn.fetch(
                    sql("heartbeat"), self.worker_id, ids, self._config.lease_seconds
                )
            }
        for sid in ids:
            if sid not in kept and sid in self._inflight:
                # Cancelled, or reclaimed by another worker after our lease expired.
                self._lost.add(sid)
                self._inflight[sid][0].cancel()
                log.info("step_abandoned", step_run_id=sid)

    async def _reaper_loop(self) -> None:
        interval = max(0.5, self._config.lease_seconds / 2)
        while True:
            try:
                await self._ensure_listening()
                async with self._pool.acquire() as conn:
                    await conn.fetchval(sql("reap_expired_leases"), 100)
            except Exception as exc:  # keep reaping whatever happened
                log.warning("reaper_failed", error=repr(exc))
            await asyncio.sleep(interval)

    # ----------------------------------------------------------------- loading

    async def _load_version(self, tenant: str, workflow_id: Any, version: int) -> Mapping[str, Any]:
        async with self._pool.acquire() as conn:
            definition = await conn.fetchval(sql("load_version"), tenant, workflow_id, version)
        if definition is None:
            raise StepError(ErrorClass.NOT_FOUND, f"workflow version {version} not found")
        return definition  # type: ignore[no-any-return]
