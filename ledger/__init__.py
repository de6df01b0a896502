"""The ledger: the job domain and its event store on PostgreSQL.

Other packages use what is named here; `ledger` imports none of them.
"""

from ledger.database import ensure_database
from ledger.domain import *  # noqa: F403
from ledger.domain import __all__ as _domain_all
from ledger.settings import Settings
from ledger.store import Change, Ledger, change, utc_now
from ledger.submission import Submission, check_org, job_id_for_key, to_spec

__all__ = [
    *_domain_all,
    "Change",
    "Ledger",
    "Settings",
    "Submission",
    "change",
    "check_org",
    "ensure_database",
    "job_id_for_key",
    "to_spec",
    "utc_now",
]
