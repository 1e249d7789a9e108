"""``trackin keys create|list|revoke``: API keys, written straight to the store the service uses.

The new key is printed once and never stored: the store keeps its SHA-256 only. Running servers see a
created or revoked key within ``key_refresh_seconds`` (1 s by default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parser"]


def _store(args: argparse.Namespace) -> Any:
    from trackin.service.durability import configured_store
    from trackin.service.settings import Settings

    overrides = {
        k: v
        for k, v in {"data_dir": args.data_dir, "redis_url": args.redis_url, "store": args.store}.items()
        if v is not None
    }
    store = configured_store(Settings(**overrides))  # type: ignore[arg-type]
    if store is None:
        raise SystemExit("keys need a store (SQLite or Redis): the memory store keeps none")
    return store


async def _create(args: argparse.Namespace) -> int:
    from trackin.service.security.keys import KEY_KIND, new_key

    try:
        token, key = new_key(args.tenant, [s.strip() for s in args.scopes.split(",") if s.strip()])
    except ValueError as exc:
        print(f"trackin keys create: {exc}", file=sys.stderr)
        return 2
    async with _store(args) as store:
        await store.put_record(KEY_KIND, key.key_id, key.record())
    print(f"created key {key.key_id} for tenant {key.tenant!r} with scopes {','.join(sorted(key.scopes))}",
          file=sys.stderr)  # fmt: skip
    print("store it now: it is not kept and cannot be shown again", file=sys.stderr)
    print(token)
    return 0


async def _list(args: argparse.Namespace) -> int:
    from trackin.service.security.keys import KEY_KIND

    async with _store(args) as store:
        records = await store.list_records(KEY_KIND)
    rows = [
        {
            "id": key_id,
            "tenant": value.get("tenant"),
            "scopes": value.get("scopes"),
            "created_at": value.get("created_at"),
        }
        for key_id, value in sorted(records.items())
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    for row in rows:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(row["created_at"] or 0)))
        print(f"{row['id']}\t{row['tenant']}\t{','.join(row['scopes'] or [])}\t{created}")
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    from trackin.service.security.keys import KEY_KIND

    async with _store(args) as store:
        found = args.key_id in await store.list_records(KEY_KIND)
        await store.delete_record(KEY_KIND, args.key_id)
    if not found:
        print(f"trackin keys revoke: no key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked key {args.key_id}", file=sys.stderr)
    return 0


def add_parser(commands: Any) -> None:
    """Register ``keys`` on the ``trackin`` command's subparsers."""
    keys = commands.add_parser("keys", help="create, list and revoke API keys (stored hashed)")
    keys.add_argument("--data-dir", type=Path)
    keys.add_argument("--redis-url")
    keys.add_argument("--store", choices=["auto", "sqlite", "redis"])
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="make a key and print it (once)")
    create.add_argument("--tenant", required=True, help="a-z 0-9 _ -; 'default' is the unqualified one")
    create.add_argument("--scopes", required=True, help="comma-separated: ingest, read, admin")
    create.set_defaults(run=lambda a: asyncio.run(_create(a)))
    listing = actions.add_parser("list", help="key ids, tenants and scopes (never secrets)")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(run=lambda a: asyncio.run(_list(a)))
    revoke = actions.add_parser("revoke", help="delete a key; servers refuse it within a second")
    revoke.add_argument("key_id")
    revoke.set_defaults(run=lambda a: asyncio.run(_revoke(a)))
