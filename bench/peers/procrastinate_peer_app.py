"""The Procrastinate app and tasks of bench/peers/procrastinate_peer.py, in their own module as
Procrastinate's docs ask ("Defining your app at the top level of your program": a dedicated
module, so that the app is not instantiated in ``__main__``).

The stock worker CLI loads it with ``procrastinate --app=procrastinate_peer_app.app worker``;
the connection settings come from the environment the adapter gives the worker process:
PROCRASTINATE_PEER_DSN and PROCRASTINATE_PEER_POOL_SIZE (the psycopg pool's min and max size).
The adapter itself swaps in its own connector with ``App.replace_connector``.
"""

from __future__ import annotations

import os

import procrastinate

NOOP = "noop"
CHAIN_STEP = "chain_step"


def connector(dsn: str, pool_size: int) -> procrastinate.PsycopgConnector:
    # Extra keyword arguments go to psycopg_pool.AsyncConnectionPool; a fixed-size pool, so the
    # sub-workers never wait for a connection to be opened either.
    return procrastinate.PsycopgConnector(conninfo=dsn, min_size=pool_size, max_size=pool_size)


app = procrastinate.App(
    connector=connector(
        os.environ.get("PROCRASTINATE_PEER_DSN", ""),
        int(os.environ.get("PROCRASTINATE_PEER_POOL_SIZE", "2")),
    )
)


# Names are explicit so the deferring side and the workers agree whatever the import path.
@app.task(name=NOOP)
async def noop() -> None:
    return None


@app.task(name=CHAIN_STEP)
async def chain_step(run: int, i: int, length: int) -> None:
    # The chain is built by the jobs themselves: job i defers job i + 1 when it runs.
    if i < length:
        await chain_step.defer_async(run=run, i=i + 1, length=length)
