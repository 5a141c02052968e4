"""Webhooks through a real `maestro api` process: the signing example from docs/WEBHOOKS.md
starts a workflow; a replay does not; the secret never reaches the process's logs."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Spawner, api_client, chain, publish, wait_execution

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "WEBHOOKS.md"
KEY = "ZTJlLXdlYmhvb2stZW5jcnlwdGlvbi1rZXktMzJieXQ="  # base64 of 32 bytes


def documented_python_sender() -> Any:
    """The `deliver` function of the Python example in docs/WEBHOOKS.md, as a reader would
    copy it."""
    text = DOCS.read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def deliver" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace["deliver"]


async def test_the_documented_sender_starts_the_workflow_through_a_real_api(
    spawn: Spawner, db_dsn: str
) -> None:
    api = spawn.api(db_dsn, MAESTRO_WEBHOOK_ENCRYPTION_KEY=KEY)
    worker = spawn.worker(db_dsn, MAESTRO_POLL_INTERVAL_SECONDS="0.2")
    await asyncio.gather(api.wait_ready(), worker.wait_ready())
    async with api_client(api.url) as client:
        wid = await publish(client, chain("hooked", 1))
        r = await client.post(f"/api/workflows/{wid}/webhooks", json={"triggerPath": "orders"})
        assert r.status_code == 201, r.text
        hook = r.json()
        assert hook["url"] == f"{api.url}/api/webhooks/workflow/{wid}/orders"

        deliver = documented_python_sender()
        status = await asyncio.to_thread(deliver, hook["url"], hook["secret"], {"n": 41})
        assert status == 202
        listed = (await client.get("/api/executions", params={"workflowId": wid})).json()
        [execution] = listed["items"]
        assert execution["trigger"]["type"] == "webhook"
        done = await wait_execution(client, execution["id"], {"succeeded", "failed"})
        assert done["status"] == "succeeded", done

        # A forged delivery: right shape, wrong secret.
        forged = "whsec_" + "QUJD" * 10 + "QUI="
        with pytest.raises(Exception, match="401"):
            await asyncio.to_thread(deliver, hook["url"], forged, {"n": 1})
        assert (
            len((await client.get("/api/executions", params={"workflowId": wid})).json()["items"])
            == 1
        )
    assert await api.terminate() == 0, api.describe()
    assert await worker.terminate() == 0, worker.describe()
    logs = api.stdout + api.stderr
    assert hook["secret"] not in logs
    assert hook["secret"].removeprefix("whsec_") not in logs
    assert "webhook_rejected" in logs
