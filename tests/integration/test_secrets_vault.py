"""vault:// references against the Vault emulator served over real HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from maestro.secrets import SecretError, SecretResolver, VaultConfig
from tests.fakes.asgi_server import serve_asgi
from tests.fakes.vault import FakeVault

SLACK_TOKEN = "xoxb-1234-very-secret-slack-token"
OTHER_VALUE = "another-secret-value-42"
JWT = "eyJhbGciOiJSUzI1NiJ9.service-account.signature"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def vault() -> AsyncIterator[tuple[FakeVault, str]]:
    fake = FakeVault()
    fake.put("secret", "slack", {"token": SLACK_TOKEN, "signing": OTHER_VALUE})
    fake.put("kv", "team/a/b", {"k": OTHER_VALUE, "port": 5432})
    async with serve_asgi(fake) as url:
        yield fake, url


@pytest.fixture
def jwt_file(tmp_path: Path) -> Path:
    path = tmp_path / "sa-token"
    path.write_text(JWT + "\n")
    return path


def assert_no_value(error: SecretError) -> None:
    for value in (SLACK_TOKEN, OTHER_VALUE, JWT):
        assert value not in str(error)
        assert value not in repr(error)


async def expect_error(resolver: SecretResolver, ref: str) -> SecretError:
    with pytest.raises(SecretError) as caught:
        await resolver.resolve(ref)
    assert_no_value(caught.value)
    return caught.value


async def test_token_read(vault: tuple[FakeVault, str]) -> None:
    fake, url = vault
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()))
    assert await resolver.resolve("vault://secret/slack#token") == SLACK_TOKEN
    assert await resolver.resolve("vault://kv/team/a/b#k") == OTHER_VALUE
    assert await resolver.resolve("vault://kv/team/a/b#port") == "5432"  # JSON scalars as text
    assert fake.requests[0].path == "/v1/secret/data/slack"
    assert fake.requests[1].path == "/v1/kv/data/team/a/b"
    assert "x-vault-namespace" not in fake.requests[0].headers
    await resolver.aclose()


async def test_missing_key_is_not_found_and_lists_keys(vault: tuple[FakeVault, str]) -> None:
    fake, url = vault
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()))
    error = await expect_error(resolver, "vault://secret/slack#nope")
    assert error.code == "secret_not_found"
    assert not error.retryable
    assert "vault://secret/slack#nope" in str(error)
    assert "keys: signing, token" in str(error)
    await resolver.aclose()


async def test_missing_path_is_not_found(vault: tuple[FakeVault, str]) -> None:
    fake, url = vault
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()))
    error = await expect_error(resolver, "vault://secret/missing#token")
    assert error.code == "secret_not_found"
    assert not error.retryable
    assert "vault kv put -mount=secret missing token=" in str(error)
    await resolver.aclose()


async def test_bad_token_is_denied_and_not_retryable(vault: tuple[FakeVault, str]) -> None:
    _fake, url = vault
    resolver = SecretResolver(VaultConfig(addr=url, token="hvs.not-a-real-token"))
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_denied"
    assert not error.retryable
    assert "permission denied" in str(error)
    await resolver.aclose()


async def test_sealed_vault_is_retryable_and_not_cached(vault: tuple[FakeVault, str]) -> None:
    fake, url = vault
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()))
    fake.sealed = True
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_unavailable"
    assert error.retryable
    assert "HTTP 503" in str(error)
    assert "Vault is sealed" in str(error)
    fake.sealed = False
    assert await resolver.resolve("vault://secret/slack#token") == SLACK_TOKEN
    await resolver.aclose()


async def test_rate_limited_vault_is_retryable(vault: tuple[FakeVault, str]) -> None:
    fake, url = vault
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()))
    fake.rate_limited = True
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_unavailable"
    assert error.retryable
    assert "HTTP 429" in str(error)
    await resolver.aclose()


async def test_timeout_is_retryable(vault: tuple[FakeVault, str]) -> None:
    fake, url = vault
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()), timeout_seconds=0.05)
    fake.latency_seconds = 0.5
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_unavailable"
    assert error.retryable
    assert "did not answer" in str(error)
    await resolver.aclose()


async def test_unreachable_vault_is_retryable() -> None:
    async with serve_asgi(FakeVault()) as url:
        pass  # the port is closed again once the server stops
    resolver = SecretResolver(VaultConfig(addr=url, token="hvs.x"))
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_unavailable"
    assert error.retryable
    assert url in str(error)
    await resolver.aclose()


async def test_kubernetes_login_token_is_reused(
    vault: tuple[FakeVault, str], jwt_file: Path
) -> None:
    fake, url = vault
    fake.add_kubernetes_role("maestro", JWT, lease_duration=3600)
    clock = FakeClock()
    config = VaultConfig(addr=url, kubernetes_role="maestro", kubernetes_token_path=str(jwt_file))
    resolver = SecretResolver(config, ttl_seconds=60, clock=clock)
    assert await resolver.resolve("vault://secret/slack#token") == SLACK_TOKEN
    assert await resolver.resolve("vault://secret/slack#signing") == OTHER_VALUE
    clock.now += 120  # past the value cache, well inside the lease
    assert await resolver.resolve("vault://secret/slack#token") == SLACK_TOKEN
    assert fake.counts == {"login": 1, "read": 3}
    login = fake.requests[0]
    assert login.path == "/v1/auth/kubernetes/login"
    tokens = {r.headers["x-vault-token"] for r in fake.requests if r.path.endswith("/slack")}
    assert tokens == set(fake.issued_tokens)
    clock.now += 3600  # past the lease: log in again before reading
    assert await resolver.resolve("vault://secret/slack#token") == SLACK_TOKEN
    assert fake.counts == {"login": 2, "read": 4}
    await resolver.aclose()


async def test_kubernetes_relogin_after_revocation(
    vault: tuple[FakeVault, str], jwt_file: Path
) -> None:
    fake, url = vault
    fake.add_kubernetes_role("maestro", JWT)
    clock = FakeClock()
    config = VaultConfig(addr=url, kubernetes_role="maestro", kubernetes_token_path=str(jwt_file))
    resolver = SecretResolver(config, clock=clock)
    assert await resolver.resolve("vault://secret/slack#token") == SLACK_TOKEN
    fake.revoke_all_tokens()
    clock.now += 61
    assert await resolver.resolve("vault://secret/slack#token") == SLACK_TOKEN
    # login, read, read refused (403), login again, read
    assert fake.counts == {"login": 2, "read": 3}
    await resolver.aclose()


async def test_kubernetes_role_without_read_access_is_denied_after_one_relogin(
    vault: tuple[FakeVault, str], jwt_file: Path
) -> None:
    fake, url = vault
    fake.add_kubernetes_role("maestro", JWT, namespace="elsewhere")  # tokens useless at root
    config = VaultConfig(addr=url, kubernetes_role="maestro", kubernetes_token_path=str(jwt_file))
    resolver = SecretResolver(config)
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_denied"
    assert fake.counts == {"login": 2, "read": 2}
    await resolver.aclose()


@pytest.mark.parametrize(
    ("role", "jwt", "message"),
    [
        ("unknown", JWT, 'invalid role name \\"unknown\\"'),
        ("maestro", "wrong.jwt.value", "permission denied"),
    ],
)
async def test_kubernetes_login_refused(
    vault: tuple[FakeVault, str], tmp_path: Path, role: str, jwt: str, message: str
) -> None:
    fake, url = vault
    fake.add_kubernetes_role("maestro", JWT)
    path = tmp_path / "sa-token"
    path.write_text(jwt)
    config = VaultConfig(addr=url, kubernetes_role=role, kubernetes_token_path=str(path))
    resolver = SecretResolver(config)
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_denied"
    assert not error.retryable
    assert message.replace("\\", "") in str(error)
    assert "wrong.jwt.value" not in str(error)
    await resolver.aclose()


async def test_missing_service_account_token(vault: tuple[FakeVault, str], tmp_path: Path) -> None:
    _fake, url = vault
    config = VaultConfig(
        addr=url, kubernetes_role="maestro", kubernetes_token_path=str(tmp_path / "absent")
    )
    resolver = SecretResolver(config)
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_denied"
    assert str(tmp_path / "absent") in str(error)
    await resolver.aclose()


async def test_namespace_header_is_sent(vault: tuple[FakeVault, str], jwt_file: Path) -> None:
    fake, url = vault
    fake.put("secret", "slack", {"token": OTHER_VALUE}, namespace="team-a")
    token = fake.add_token(namespace="team-a")
    resolver = SecretResolver(VaultConfig(addr=url, token=token, namespace="team-a"))
    assert await resolver.resolve("vault://secret/slack#token") == OTHER_VALUE
    assert fake.requests[-1].headers["x-vault-namespace"] == "team-a"
    await resolver.aclose()

    fake.add_kubernetes_role("ns-role", JWT, namespace="team-a")
    config = VaultConfig(
        addr=url,
        kubernetes_role="ns-role",
        kubernetes_token_path=str(jwt_file),
        namespace="team-a",
    )
    resolver = SecretResolver(config)
    assert await resolver.resolve("vault://secret/slack#token") == OTHER_VALUE
    assert all(r.headers["x-vault-namespace"] == "team-a" for r in fake.requests[-2:])
    await resolver.aclose()

    # The same token without the namespace header addresses the root namespace: refused.
    resolver = SecretResolver(VaultConfig(addr=url, token=token))
    error = await expect_error(resolver, "vault://secret/slack#token")
    assert error.code == "secret_backend_denied"
    await resolver.aclose()


async def test_concurrent_resolves_share_one_request(vault: tuple[FakeVault, str]) -> None:
    fake, url = vault
    fake.latency_seconds = 0.05  # keep the first request in flight while the others arrive
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()))
    results = await asyncio.gather(
        *(resolver.resolve("vault://secret/slack#token") for _ in range(25))
    )
    assert results == [SLACK_TOKEN] * 25
    assert fake.counts["read"] == 1
    assert resolver.known_values() == {SLACK_TOKEN}
    await resolver.aclose()


async def test_concurrent_failures_share_one_request(vault: tuple[FakeVault, str]) -> None:
    fake, url = vault
    fake.sealed = True
    fake.latency_seconds = 0.05
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()))
    outcomes = await asyncio.gather(
        *(resolver.resolve("vault://secret/slack#token") for _ in range(10)),
        return_exceptions=True,
    )
    assert all(isinstance(o, SecretError) and o.retryable for o in outcomes)
    assert fake.counts["read"] == 1
    await resolver.aclose()


async def test_cancelling_one_caller_does_not_fail_the_others(
    vault: tuple[FakeVault, str],
) -> None:
    fake, url = vault
    fake.latency_seconds = 0.05
    resolver = SecretResolver(VaultConfig(addr=url, token=fake.add_token()))
    first = asyncio.create_task(resolver.resolve("vault://secret/slack#token"))
    second = asyncio.create_task(resolver.resolve("vault://secret/slack#token"))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == SLACK_TOKEN
    with pytest.raises(asyncio.CancelledError):
        await first
    assert fake.counts["read"] == 1
    await resolver.aclose()
