"""One harmless call and one real action per provider, with real credentials."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from maestro.connectors import email, jira, slack
from maestro.connectors.base import ConnectorResources
from tests.live.conftest import live_context, require


async def test_slack(resources: ConnectorResources, add_connection: Callable[..., Any]) -> None:
    env = require("MAESTRO_LIVE_SLACK_TOKEN", "MAESTRO_LIVE_SLACK_CHANNEL")
    config = {"botToken": {"secretRef": "env://MAESTRO_LIVE_SLACK_TOKEN"}}
    facts = await slack.check(resources, {**config, "baseUrl": "https://slack.com/api/"})
    assert facts["team"]
    await add_connection("slack", "slack", config)
    posted = await slack.make_handler(resources)(
        live_context("live-slack"),
        {
            "connection": "slack",
            "channel": env["MAESTRO_LIVE_SLACK_CHANNEL"],
            "text": "Maestro Composer live test",
        },
    )
    assert posted["ts"]


async def test_jira(resources: ConnectorResources, add_connection: Callable[..., Any]) -> None:
    env = require(
        "MAESTRO_LIVE_JIRA_URL",
        "MAESTRO_LIVE_JIRA_EMAIL",
        "MAESTRO_LIVE_JIRA_TOKEN",
        "MAESTRO_LIVE_JIRA_PROJECT",
    )
    config = {
        "baseUrl": env["MAESTRO_LIVE_JIRA_URL"],
        "auth": {
            "type": "basic",
            "email": env["MAESTRO_LIVE_JIRA_EMAIL"],
            "apiToken": {"secretRef": "env://MAESTRO_LIVE_JIRA_TOKEN"},
        },
    }
    assert (await jira.check(resources, config))["accountId"]
    await add_connection("jira", "jira", config)
    found = await jira.make_handler(resources)(
        live_context("live-jira"),
        {
            "connection": "jira",
            "operation": "searchIssues",
            "jql": f"project = {env['MAESTRO_LIVE_JIRA_PROJECT']}",
            "maxResults": 1,
        },
    )
    assert "issues" in found


async def test_smtp(resources: ConnectorResources, add_connection: Callable[..., Any]) -> None:
    env = require(
        "MAESTRO_LIVE_SMTP_HOST",
        "MAESTRO_LIVE_SMTP_PORT",
        "MAESTRO_LIVE_SMTP_USERNAME",
        "MAESTRO_LIVE_SMTP_PASSWORD",
        "MAESTRO_LIVE_SMTP_FROM",
        "MAESTRO_LIVE_SMTP_TO",
    )
    config = {
        "host": env["MAESTRO_LIVE_SMTP_HOST"],
        "port": int(env["MAESTRO_LIVE_SMTP_PORT"]),
        "security": "starttls",
        "username": env["MAESTRO_LIVE_SMTP_USERNAME"],
        "password": {"secretRef": "env://MAESTRO_LIVE_SMTP_PASSWORD"},
        "from": env["MAESTRO_LIVE_SMTP_FROM"],
    }
    assert (await email.check(resources, config))["authenticated"]
    await add_connection("smtp", "smtp", config)
    sent = await email.make_handler(resources)(
        live_context("live-smtp"),
        {
            "connection": "smtp",
            "to": [env["MAESTRO_LIVE_SMTP_TO"]],
            "subject": "Maestro Composer live test",
            "text": "It works.",
        },
    )
    assert sent["accepted"]
