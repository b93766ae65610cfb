"""Who is calling: API keys checked as digests, and each key's spending per UTC day. Pure."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass

from cluster.errors import ImageGenError
from cluster.planning.costs.money import format_usd

KEYLESS = "local"  # the one caller of a server without keys (loopback only)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """A request's key, as the server knows it: `owner` names the key's own folders and budget."""

    owner: str


class KeyCheck:
    def __init__(self, digests: tuple[str, ...]):
        self.digests = digests

    def caller(self, authorization: str) -> Caller:
        """The caller an `Authorization` header names; IMG_007 when it names none. Compared in
        constant time, on digests (every known digest is compared)."""
        if not self.digests:
            return Caller(KEYLESS)
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ImageGenError("IMG_007", "missing API key: send `Authorization: Bearer <key>`.")
        presented = digest(key.strip())
        matches = [hmac.compare_digest(presented, known) for known in self.digests]
        if not any(matches):
            raise ImageGenError("IMG_007", "the API key is not valid for this server.")
        return Caller(presented[:24])


@dataclass
class Hold:
    """What a request holds of its key's day until it settles."""

    slot: tuple[str, str]
    usd: float


class KeyBudgets:
    """What each API key may still spend today (UTC), over this server's life. A request holds its
    estimate (at most what the key has left) while it runs, so a key's concurrent requests share
    its remainder instead of the first holding all of it; it settles at what it really cost. Only
    today's entries are kept: the table holds one row per configured key at most."""

    def __init__(self, per_day_usd: float, clock=time.time):
        self.per_day_usd = per_day_usd
        self._clock = clock
        self._spent: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def reserve(self, owner: str, estimate_usd: float) -> Hold:
        """`estimate_usd` held for this request (or what is left, when less); IMG_029 when nothing is."""
        day = time.strftime("%Y-%m-%d", time.gmtime(self._clock()))
        slot = (owner, day)
        with self._lock:
            for table in (self._spent, self._held):
                for old in [s for s in table if s[1] != day and (table is self._spent or not table[s])]:
                    del table[old]
            left = self.per_day_usd - self._spent.get(slot, 0.0) - self._held.get(slot, 0.0)
            if left <= 1e-9:
                raise ImageGenError("IMG_029", f"this API key's budget for today ({format_usd(self.per_day_usd)}) is spent, "
                                               "or held by its requests in progress.")
            usd = min(max(estimate_usd, 0.0), left)
            self._held[slot] = self._held.get(slot, 0.0) + usd
        return Hold(slot, usd)

    def settle(self, hold: Hold, spent: float) -> None:
        with self._lock:
            self._held[hold.slot] = max(0.0, self._held.get(hold.slot, 0.0) - hold.usd)
            self._spent[hold.slot] = self._spent.get(hold.slot, 0.0) + spent

    def rows(self) -> int:
        return len(self._spent) + len(self._held)
