"""API keys at rest: the format, the hash, and ``trackin keys create|list|revoke`` against a real SQLite file
and a real redis-server, scanned afterwards for the key in plain text (it must never be there)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer, redis_server_binary
from trackin.cli import main
from trackin.service.security.keyring import Keyring
from trackin.service.security.keys import (
    BOOTSTRAP_ID,
    ApiKey,
    bootstrap_key,
    digest,
    new_key,
    split_key,
)
from trackin.service.store import SQLiteStore


def keys(capsys: pytest.CaptureFixture[str], store_args: list[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["keys", *store_args, *args])
    return code, capsys.readouterr().out.strip()


def test_a_new_key_is_random_and_kept_only_as_a_digest() -> None:
    token, key = new_key("acme", ["read", "ingest"])
    other, _ = new_key("acme", ["read"])
    assert token != other
    key_id, secret = split_key(token)
    assert key_id == key.key_id
    assert len(secret) == 43
    assert key.digest == digest(secret)
    assert secret not in json.dumps(key.record())
    assert key.matches(secret)
    assert not key.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert ApiKey.from_record(key.key_id, key.record()) == key
    assert key.scopes == {"read", "ingest"}


@pytest.mark.parametrize(
    ("tenant", "scopes"),
    [
        ("Acme", ["read"]),
        ("a/b", ["read"]),
        ("~x", ["read"]),
        ("", ["read"]),
        ("acme", []),
        ("acme", ["root"]),
    ],
)
def test_bad_tenants_and_scopes_are_refused(tenant: str, scopes: list[str]) -> None:
    with pytest.raises(ValueError, match="Invalid"):
        new_key(tenant, scopes)


def test_the_bootstrap_key_is_any_long_secret() -> None:
    key = bootstrap_key("x" * 40)
    assert key.key_id == BOOTSTRAP_ID
    assert key.tenant == "default"
    assert key.scopes == {"ingest", "read", "admin"}
    assert split_key("x" * 40) == (BOOTSTRAP_ID, "x" * 40)
    with pytest.raises(ValueError, match="at least 32"):
        bootstrap_key("short")


def test_cli_create_list_revoke_on_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    where = ["--data-dir", str(tmp_path), "--store", "sqlite"]
    code, token = keys(capsys, where, "create", "--tenant", "acme", "--scopes", "ingest,read")
    assert code == 0
    assert token.startswith("trk_")
    key_id, secret = split_key(token)
    code, listed = keys(capsys, where, "list", "--json")
    rows = json.loads(listed)
    assert code == 0
    assert rows == [
        {"id": key_id, "tenant": "acme", "scopes": ["ingest", "read"], "created_at": rows[0]["created_at"]}
    ]
    assert token not in listed
    assert secret not in listed
    # The SQLite file (and its WAL) holds the digest, never the key or its secret.
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("trackin.sqlite3*"))
    assert digest(secret).encode() in raw
    assert secret.encode() not in raw
    assert token.encode() not in raw
    assert keys(capsys, where, "revoke", key_id)[0] == 0
    assert json.loads(keys(capsys, where, "list", "--json")[1]) == []
    assert keys(capsys, where, "revoke", key_id)[0] == 1  # already gone
    assert keys(capsys, where, "create", "--tenant", "acme", "--scopes", "root")[0] == 2


@pytest.mark.skipif(redis_server_binary() is None, reason="redis-server not installed")
def test_cli_keys_on_redis_are_hashed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with RedisServer(tmp_path) as server:
        where = ["--redis-url", server.url, "--store", "redis"]
        code, token = keys(capsys, where, "create", "--tenant", "acme", "--scopes", "admin")
        assert code == 0
        key_id, secret = split_key(token)
        client = redis.Redis.from_url(server.url)
        seen = b""
        for name in client.scan_iter():
            seen += name
            kind = client.type(name)
            if kind == b"hash":
                seen += b"".join(k + v for k, v in client.hgetall(name).items())
            elif kind == b"string":
                seen += client.get(name) or b""
        assert key_id.encode() in seen
        assert digest(secret).encode() in seen
        assert secret.encode() not in seen
        assert token.encode() not in seen
        rows = json.loads(keys(capsys, where, "list", "--json")[1])
        assert [(r["id"], r["tenant"], r["scopes"]) for r in rows] == [(key_id, "acme", ["admin"])]
        client.close()


async def test_keyring_verifies_caches_and_forgets_revoked_keys(tmp_path: Path) -> None:
    token, key = new_key("acme", ["read"])
    async with SQLiteStore(tmp_path / "keys.sqlite3") as store:
        await store.put_record("api_keys", key.key_id, key.record())
        keyring = Keyring(SQLiteStore(tmp_path / "keys.sqlite3"), refresh_seconds=60, bootstrap="b" * 32)
        await keyring.start()
        try:
            assert keyring.enforcing
            found = keyring.lookup(token)
            assert found is not None
            assert found.tenant == "acme"
            assert found.namespace.prefix == "~acme/"
            assert keyring.lookup(token) is found  # cached
            assert keyring.lookup(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
            boot = keyring.lookup("b" * 32)
            assert boot is not None
            assert boot.tenant == "default"
            assert boot.namespace.prefix == ""
            assert "b" * 32 not in json.dumps(await store.list_records("api_keys"))
            await store.delete_record("api_keys", key.key_id)
            await keyring.refresh()
            assert keyring.lookup(token) is None
        finally:
            await keyring.stop()


async def test_a_store_less_keyring_is_open_without_a_bootstrap_key() -> None:
    assert not Keyring(None, 1.0).enforcing
    assert Keyring(None, 1.0, bootstrap="c" * 32).enforcing
    # Off loopback, keys are required: no key (the last one revoked) locks the service, never opens it.
    required = Keyring(None, 1.0, required=True)
    assert required.enforcing
    assert required.lookup("anything") is None
