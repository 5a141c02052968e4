"""The Celery app and tasks of the Celery peer (bench/peers/celery_peer.py).

A separate module because `celery -A celery_peer_app worker` imports it in every worker process;
the driver imports it too, to enqueue. It is configured through environment variables that
the driver sets for itself and its workers (CELERY_PEER_REDIS, CELERY_PEER_CONCURRENCY,
CELERY_PEER_PREFETCH); the settings and why they were chosen are in celery_peer.py's docstring.

Celery keeps no per-task timestamps without a result backend or task events, so the tasks
write a minimal side channel to the same Redis database: one RPUSH per no-op task (its start
and end time.time()), one per chain (its last task's end), on a Redis client per worker
process whose pooled connection is opened when the process starts.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

REDIS_URL = os.environ.get("CELERY_PEER_REDIS", "redis://127.0.0.1:6379/0")
CONCURRENCY = int(os.environ.get("CELERY_PEER_CONCURRENCY", "16"))
PREFETCH_MULTIPLIER = int(os.environ.get("CELERY_PEER_PREFETCH", "64"))

#: "<started> <finished>" (time.time() reprs) of every finished no-op task.
DONE_KEY = "celery_peer:done"
#: time.time() at which the last task of a chain finished.
CHAIN_KEY = "celery_peer:chain_done"
#: one entry per worker main process whose consumer is up.
READY_KEY = "celery_peer:ready"

app = Celery("celery_peer_app", broker=REDIS_URL)
app.conf.update(
    # No result backend: nothing reads results, the side channel carries the timestamps.
    task_ignore_result=True,
    # Optimizing guide, "Prefetch Limits": for many short tasks where throughput/round trip
    # matter, the multiplier "should be large ... Say 64, or 128" (default 4).
    worker_prefetch_multiplier=PREFETCH_MULTIPLIER,
    # Optimizing guide, "Broker Connection Pools": size the pool by the number of threads
    # publishing; a chain step publishes from every pool slot. Never below the default 10.
    broker_pool_limit=max(10, CONCURRENCY),
    # The defaults, spelled out: early acknowledgement, no task events.
    task_acks_late=False,
    worker_send_task_events=False,
    broker_connection_retry_on_startup=True,
)

_side: redis.Redis | None = None
_side_pid = 0


def side() -> redis.Redis:
    """The side-channel client of this process (created after fork, so per child)."""
    global _side, _side_pid
    if _side is None or _side_pid != os.getpid():
        _side = redis.Redis.from_url(REDIS_URL)
        _side_pid = os.getpid()
    return _side


@app.task(name="celery_peer.noop", ignore_result=True)
def noop() -> None:
    """A no-op job; the side channel records when it started and finished."""
    started = time.time()
    # The job itself does nothing, so "finished" is taken right away; one RPUSH carries both.
    side().rpush(DONE_KEY, f"{started!r} {time.time()!r}")


@app.task(name="celery_peer.chain_step", ignore_result=True)
def chain_step(n: int, length: int) -> None:
    """Step ``n`` of ``length``: enqueue the next step, or record the end of the chain."""
    if n < length:
        chain_step.apply_async((n + 1, length))
        return
    side().rpush(CHAIN_KEY, repr(time.time()))


def _import_publish_path() -> None:
    app.finalize(auto=True)
    for task in (noop, chain_step):
        task.backend  # noqa: B018 - imports the (disabled) result backend and AsyncResult
    app.amqp.send_task_message  # noqa: B018 - builds the task sender (imports celery.events)


def warm_publisher() -> None:
    """Do the one-time work of a process's first ``apply_async`` up front.

    Celery imports its publishing machinery lazily and kombu connects a producer on first use:
    about 50 ms in the first ``apply_async`` of each process (measured here). A long-running
    deployment pays that once per process; the benchmark must not measure it as job latency.
    """
    _import_publish_path()
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=3)
        producer.channel  # noqa: B018 - resolves the lazy channel
        producer.maybe_declare(app.amqp.queues[app.conf.task_default_queue])


@worker_init.connect
def _import_before_fork(**_: object) -> None:
    # In the worker's main process, before the prefork pool forks: the children inherit the
    # imports. No connection is opened here (a connection must not cross a fork).
    _import_publish_path()


@worker_process_init.connect
def _connect_child(**_: object) -> None:
    # In each prefork child as it starts: the side channel and the producer (chain steps
    # publish), so that no measured task pays for a connection.
    side().ping()
    warm_publisher()


@worker_ready.connect
def _announce_ready(sender: object = None, **_: object) -> None:
    # The threads pool runs tasks in this process: connect its producer too.
    warm_publisher()
    # The driver waits for this before it starts the latency/chain clock.
    side().rpush(READY_KEY, str(os.getpid()))
