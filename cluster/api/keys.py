"""Who is calling: API keys checked as digests, and each key's spending per UTC day. Pure."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass

from cluster.errors import ImageGenError

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


class KeyBudgets:
    """What each API key may still spend today (UTC), over this server's life."""

    def __init__(self, per_day_usd: float):
        self.per_day_usd = per_day_usd
        self._spent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def reserve(self, owner: str) -> tuple[tuple[str, str], float]:
        """(the key's slot today, what it has left), all of it held for this request until `settle`,
        so concurrent requests of one key cannot each spend the same remainder; IMG_029 when nothing is."""
        slot = (owner, time.strftime("%Y-%m-%d", time.gmtime()))
        with self._lock:
            left = self.per_day_usd - self._spent.get(slot, 0.0)
            if left <= 1e-9:
                raise ImageGenError("IMG_029", f"this API key's budget for today (${self.per_day_usd:g}) is spent.")
            self._spent[slot] = self.per_day_usd
        return slot, left

    def settle(self, slot: tuple[str, str], held: float, spent: float) -> None:
        with self._lock:
            self._spent[slot] = self._spent.get(slot, 0.0) - held + spent
