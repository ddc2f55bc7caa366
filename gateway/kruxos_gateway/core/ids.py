"""Identifiers of invocations: unique, cheap, and not secret.

An invocation id names one invocation in results, the audit log and approvals. It must be unique,
not unguessable (it grants nothing), so it need not cost a call into the kernel's random source per
invocation (``secrets`` does one ``getrandom`` per call, tens of microseconds on some VMs). Each
gateway process draws one 64-bit random prefix at start and counts from there: ids never repeat
within a process, and two processes (a restart) share a prefix with probability 2**-64.
"""

from __future__ import annotations

import itertools
import secrets

_PREFIX = secrets.token_hex(8)
_COUNTER = itertools.count(1)


def invocation_id() -> str:
    """A new invocation id, e.g. ``inv_3f9c0a1b2d4e5f60000000000001``."""
    return f"inv_{_PREFIX}{next(_COUNTER):012x}"
