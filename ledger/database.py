"""Where the ledger lives: DATABASE_URL parsing and creating the database."""

from __future__ import annotations

import getpass

import psycopg
from eventsourcing.persistence import InterfaceError, OperationalError
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

# What an unreachable or restarting PostgreSQL raises, through psycopg or
# through the eventsourcing recorder (which wraps psycopg's errors in its own).
# A pool timeout is a psycopg OperationalError too.
DATABASE_DOWN: tuple[type[Exception], ...] = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    OperationalError,
    InterfaceError,
)


def connection_params(database_url: str) -> dict[str, str]:
    """Host, port, user, password and database name, with libpq's defaults."""
    params = conninfo_to_dict(database_url)
    return {
        "host": str(params.get("host") or "localhost"),
        "port": str(params.get("port") or 5432),
        "user": str(params.get("user") or getpass.getuser()),
        "password": str(params.get("password") or ""),
        "dbname": str(params.get("dbname") or getpass.getuser()),
    }


def maintenance_url(database_url: str) -> str:
    return make_conninfo(database_url, dbname="postgres")


def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL if it is missing; True if created."""
    name = connection_params(database_url)["dbname"]
    with psycopg.connect(maintenance_url(database_url), autocommit=True, connect_timeout=5) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
        return True
