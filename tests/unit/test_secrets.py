"""Secret references without network: parsing, env and file backends, cache, scrubbing."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
from pydantic import ValidationError

from maestro.secrets import (
    SecretError,
    SecretRef,
    SecretResolver,
    VaultConfig,
    is_secret_ref,
    scrub,
    scrub_json,
)

VALUE = "s3cr3t-value-do-not-leak"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- SecretRef -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "scheme"),
    [
        ("env://ORDERS_TOKEN", "env"),
        ("env://_x1", "env"),
        ("file:///run/secrets/token", "file"),
        ("vault://secret/slack#token", "vault"),
        ("vault://kv/team/a/b#k", "vault"),
    ],
)
def test_valid_references_parse(ref: str, scheme: str) -> None:
    parsed = SecretRef.model_validate({"secretRef": ref})
    assert parsed.secret_ref == ref
    assert parsed.scheme == scheme
    assert parsed.model_dump(by_alias=True) == {"secretRef": ref}
    assert SecretRef(secret_ref=ref) == parsed


@pytest.mark.parametrize(
    ("ref", "hint"),
    [
        ("https://example.com/x", "env://NAME"),
        ("ORDERS_TOKEN", "vault://mount/path#key"),
        ("env://", "environment variable name"),
        ("env://1BAD", "environment variable name"),
        ("env://A-B", "environment variable name"),
        ("file://relative/path", "absolute path"),
        ("file:///", "absolute path"),
        ("vault://secret/slack", "vault://mount/path#key"),
        ("vault://secret#token", "vault://mount/path#key"),
        ("vault://secret/slack#", "vault://mount/path#key"),
        ("vault://secret/a//b#k", "segment"),
        ("vault://secret/../sys#k", "segment"),
    ],
)
def test_invalid_references_say_the_accepted_form(ref: str, hint: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SecretRef.model_validate({"secretRef": ref})
    assert hint in str(caught.value)


def test_secret_ref_forbids_extra_fields() -> None:
    with pytest.raises(ValidationError):
        SecretRef.model_validate({"secretRef": "env://A", "value": "x"})


def test_is_secret_ref() -> None:
    assert is_secret_ref({"secretRef": "env://A"})
    assert is_secret_ref({"secretRef": "not even valid"})  # shape only; resolve validates
    assert not is_secret_ref({"secretRef": "env://A", "other": 1})
    assert not is_secret_ref({"secretRef": 3})
    assert not is_secret_ref({"secret_ref": "env://A"})
    assert not is_secret_ref("env://A")
    assert not is_secret_ref(None)


# --- env and file --------------------------------------------------------------------------


async def test_env_reference_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAESTRO_TEST_SECRET", VALUE)
    resolver = SecretResolver()
    assert await resolver.resolve("env://MAESTRO_TEST_SECRET") == VALUE
    assert await resolver.resolve({"secretRef": "env://MAESTRO_TEST_SECRET"}) == VALUE
    assert await resolver.resolve(SecretRef(secret_ref="env://MAESTRO_TEST_SECRET")) == VALUE
    await resolver.aclose()


async def test_missing_env_variable_is_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAESTRO_TEST_MISSING", raising=False)
    with pytest.raises(SecretError) as caught:
        await SecretResolver().resolve("env://MAESTRO_TEST_MISSING")
    assert caught.value.code == "secret_not_found"
    assert not caught.value.retryable
    assert "env://MAESTRO_TEST_MISSING is not set in the worker's environment" in str(caught.value)


async def test_invalid_reference_raises_secret_error() -> None:
    resolver = SecretResolver()
    with pytest.raises(SecretError) as caught:
        await resolver.resolve("ftp://x")
    assert caught.value.code == "invalid_secret_ref"
    assert "vault://mount/path#key" in str(caught.value)
    with pytest.raises(SecretError) as extra:
        await resolver.resolve({"secretRef": "env://A", "extra": 1})
    assert extra.value.code == "invalid_secret_ref"
    assert "secretRef" in str(extra.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{VALUE}\n", VALUE),
        (f"{VALUE}\r\n", VALUE),
        (f"{VALUE}\n\n", f"{VALUE}\n"),
        (f"{VALUE}", VALUE),
        (f"  {VALUE} \n", f"  {VALUE} "),
    ],
)
async def test_file_reference_strips_one_trailing_newline(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content.encode())
    assert await SecretResolver().resolve(f"file://{path}") == expected


async def test_missing_file_is_unreadable_and_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "absent"
    with pytest.raises(SecretError) as caught:
        await SecretResolver().resolve(f"file://{path}")
    assert caught.value.code == "secret_unreadable"
    assert not caught.value.retryable
    assert str(path) in str(caught.value)


async def test_a_path_that_cannot_be_read_is_unreadable(tmp_path: Path) -> None:
    # A directory cannot be read as a file, whoever runs the test (root reads chmod-0 files).
    with pytest.raises(SecretError) as caught:
        await SecretResolver().resolve(f"file://{tmp_path}")
    assert caught.value.code == "secret_unreadable"
    assert str(tmp_path) in str(caught.value)


async def test_binary_file_error_does_not_carry_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "binary"
    path.write_bytes(b"\xff\xfe" + VALUE.encode())
    with pytest.raises(SecretError) as caught:
        await SecretResolver().resolve(f"file://{path}")
    assert caught.value.code == "secret_unreadable"
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__
    assert VALUE not in str(caught.value) + repr(caught.value)


async def test_vault_reference_without_vault_configured_is_a_config_error() -> None:
    with pytest.raises(SecretError) as caught:
        await SecretResolver().resolve("vault://secret/slack#token")
    assert caught.value.code == "invalid_secret_ref"
    assert not caught.value.retryable
    assert "MAESTRO_VAULT_ADDR" in str(caught.value)


# --- cache ---------------------------------------------------------------------------------


async def test_cache_serves_within_ttl_and_refreshes_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    resolver = SecretResolver(ttl_seconds=60, clock=clock)
    monkeypatch.setenv("MAESTRO_TEST_ROTATING", "first-value")
    assert await resolver.resolve("env://MAESTRO_TEST_ROTATING") == "first-value"
    monkeypatch.setenv("MAESTRO_TEST_ROTATING", "second-value")
    clock.now += 59
    assert await resolver.resolve("env://MAESTRO_TEST_ROTATING") == "first-value"
    assert resolver.known_values() == {"first-value"}
    clock.now += 2
    assert resolver.known_values() == frozenset()
    assert await resolver.resolve("env://MAESTRO_TEST_ROTATING") == "second-value"
    assert resolver.known_values() == {"second-value"}


async def test_zero_ttl_disables_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = SecretResolver(ttl_seconds=0)
    monkeypatch.setenv("MAESTRO_TEST_ROTATING", "first-value")
    assert await resolver.resolve("env://MAESTRO_TEST_ROTATING") == "first-value"
    monkeypatch.setenv("MAESTRO_TEST_ROTATING", "second-value")
    assert await resolver.resolve("env://MAESTRO_TEST_ROTATING") == "second-value"


async def test_errors_are_not_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = SecretResolver(clock=FakeClock())
    monkeypatch.delenv("MAESTRO_TEST_LATE", raising=False)
    with pytest.raises(SecretError):
        await resolver.resolve("env://MAESTRO_TEST_LATE")
    monkeypatch.setenv("MAESTRO_TEST_LATE", "arrived-now")
    assert await resolver.resolve("env://MAESTRO_TEST_LATE") == "arrived-now"


async def test_aclose_forgets_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAESTRO_TEST_SECRET", VALUE)
    resolver = SecretResolver()
    await resolver.resolve("env://MAESTRO_TEST_SECRET")
    await resolver.aclose()
    assert resolver.known_values() == frozenset()


async def test_concurrent_file_resolves_share_one_read(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(VALUE)
    resolver = SecretResolver()
    results = await asyncio.gather(*(resolver.resolve(f"file://{path}") for _ in range(20)))
    assert results == [VALUE] * 20


# --- resolve_all ---------------------------------------------------------------------------


async def test_resolve_all_replaces_refs_deeply_and_leaves_input_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAESTRO_TEST_SECRET", VALUE)
    (tmp_path / "pw").write_text("file-password\n")
    config = {
        "url": "https://x/{{ input.id }}",
        "auth": {"strategy": "bearer", "token": {"secretRef": "env://MAESTRO_TEST_SECRET"}},
        "headers": [{"name": "X-Key", "value": {"secretRef": f"file://{tmp_path / 'pw'}"}}],
        "notARef": {"secretRef": "env://MAESTRO_TEST_SECRET", "also": "kept"},
        "n": 3,
        "flag": None,
        "pair": ({"secretRef": "env://MAESTRO_TEST_SECRET"}, 1),
    }
    before = copy.deepcopy(config)
    resolved = await SecretResolver().resolve_all(config)
    assert config == before
    assert resolved == {
        "url": "https://x/{{ input.id }}",
        "auth": {"strategy": "bearer", "token": VALUE},
        "headers": [{"name": "X-Key", "value": "file-password"}],
        "notARef": {"secretRef": "env://MAESTRO_TEST_SECRET", "also": "kept"},
        "n": 3,
        "flag": None,
        "pair": (VALUE, 1),
    }
    assert resolved["notARef"] is not config["notARef"]


async def test_resolve_all_without_refs_is_a_copy() -> None:
    value = {"a": [1, {"b": "c"}]}
    copied = await SecretResolver().resolve_all(value)
    assert copied == value
    assert copied["a"] is not value["a"]


async def test_resolve_all_raises_the_first_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAESTRO_TEST_MISSING", raising=False)
    with pytest.raises(SecretError) as caught:
        await SecretResolver().resolve_all({"x": [{"secretRef": "env://MAESTRO_TEST_MISSING"}]})
    assert caught.value.code == "secret_not_found"


# --- scrubbing -----------------------------------------------------------------------------


def test_scrub_replaces_every_occurrence() -> None:
    text = f"token={VALUE}; again {VALUE}"
    assert scrub(text, [VALUE]) == "token=***; again ***"


def test_scrub_ignores_short_values_and_empty_sets() -> None:
    assert scrub("abc is short, so is a", ["abc", "a", ""]) == "abc is short, so is a"
    assert scrub("nothing here", []) == "nothing here"


def test_scrub_prefers_the_longest_secret() -> None:
    assert scrub("key=abcdefgh", ["abcd", "abcdefgh"]) == "key=***"


def test_scrub_overlapping_secrets_leave_no_fragment() -> None:
    # "abcdef" and "defghi" overlap in "abcdefghi": neither tail may survive.
    assert scrub("x abcdefghi y", ["abcdef", "defghi"]) == "x *** y"
    assert scrub("aaaaaa", ["aaaa"]) == "***"


def test_scrub_json_scrubs_keys_and_values_without_mutating() -> None:
    payload = {
        "body": {"echo": f"Bearer {VALUE}", VALUE: [VALUE, 5, None, True]},
        "list": (f"{VALUE}{VALUE}",),
    }
    before = copy.deepcopy(payload)
    scrubbed = scrub_json(payload, frozenset({VALUE}))
    assert payload == before
    assert scrubbed == {
        "body": {"echo": "Bearer ***", "***": ["***", 5, None, True]},
        "list": ("***",),
    }


# --- no value in errors or reprs -----------------------------------------------------------


async def test_no_error_or_repr_contains_a_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MAESTRO_TEST_SECRET", VALUE)
    resolver = SecretResolver(VaultConfig(addr="http://127.0.0.1:9", token=VALUE))
    await resolver.resolve("env://MAESTRO_TEST_SECRET")
    assert VALUE not in repr(resolver)
    assert VALUE not in repr(VaultConfig(addr="http://v", token=VALUE))
    errors: list[SecretError] = []
    for ref in ("env://MAESTRO_TEST_MISSING", f"file://{tmp_path / 'nope'}", "bogus"):
        try:
            await resolver.resolve(ref)
        except SecretError as exc:
            errors.append(exc)
    assert len(errors) == 3
    for error in errors:
        assert VALUE not in str(error)
        assert VALUE not in repr(error)
        assert error.code in {"secret_not_found", "secret_unreadable", "invalid_secret_ref"}
    await resolver.aclose()
