"""The HTTP API: a Litestar app over the ledger (writes) and the projections (reads).

Other packages use what is named here.
"""

from api.app import create_app
from api.keys import Principal, create_key, hash_key, migrate

__all__ = ["Principal", "create_app", "create_key", "hash_key", "migrate"]
