"""API keys: created once and shown once, stored only as a SHA-256 hash.

A key is 32 random bytes, so a plain hash is as strong as a slow one and costs
nothing per request. Lookups are cached in the process for a minute: a
request then pays no database round trip for its key.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from ledger import check_org

KEY_PREFIX = "jlk_"

CREATE_KEYS = """
CREATE TABLE IF NOT EXISTS jl_api_keys (
    key_hash text PRIMARY KEY,
    key_id text NOT NULL UNIQUE,
    org text NOT NULL,
    admin boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
INSERT_KEY = "INSERT INTO jl_api_keys (key_hash, key_id, org, admin) VALUES (%s, %s, %s, %s)"
SELECT_KEY = "SELECT key_id, org, admin FROM jl_api_keys WHERE key_hash = %s"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's organisation, and whether it may see all of them."""

    key_id: str
    org: str
    admin: bool = False

    def scope(self, org: str | None = None) -> str | None:
        """The organisation a query is limited to; None means every one (admins only)."""
        return org if self.admin else self.org

    def may_see(self, org: str) -> bool:
        return self.admin or org == self.org


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def migrate(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(CREATE_KEYS)


def create_key(database_url: str, org: str, *, admin: bool = False) -> tuple[str, Principal]:
    """A new key for `org`: the secret (show it once) and what it grants."""
    check_org(org)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = hash_key(key)
    principal = Principal(key_id=f"key:{digest[:12]}", org=org, admin=admin)
    with psycopg.connect(database_url) as conn:
        conn.execute(INSERT_KEY, (digest, principal.key_id, org, admin))
    return key, principal


class KeyStore:
    """Resolves a presented key to its principal, with a short in-process cache."""

    def __init__(self, pool: AsyncConnectionPool, *, ttl_s: float = 60.0, size: int = 10_000):
        self.pool = pool
        self.ttl_s = ttl_s
        self.size = size
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def find(self, key: str) -> Principal | None:
        if not key.startswith(KEY_PREFIX) or len(key) > 200:
            return None  # not one of ours: no need to ask the database
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(SELECT_KEY, (digest,))
            row = await cur.fetchone()
        if row is None:
            return None
        principal = Principal(key_id=row["key_id"], org=row["org"], admin=row["admin"])
        if len(self._cache) >= self.size:
            self._cache.clear()
        self._cache[digest] = (now + self.ttl_s, principal)
        return principal
