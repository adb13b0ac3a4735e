"""Which endpoint a request goes to: round-robin over the endpoints with a free slot, at most
`max_concurrency` requests in flight per endpoint, and endpoints that refused a connection left
alone for a cool-down (doubling while they keep refusing).

The pool lives inside one event loop and is used by one task at a time between awaits, so it
needs no lock. Callers run at most as many workers as the pool has slots: a worker then always
finds a free slot unless the free ones belong to endpoints that are cooling down, and it polls
until one comes back.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

POLL_S = 0.02  # how often a worker looks again when every free slot is on a cooling endpoint


@dataclass
class Endpoint:
    url: str
    in_flight: int = 0
    peak: int = 0  # the most requests it ever had in flight (for tests and diagnostics)
    sent: int = 0
    refusals: int = 0  # consecutive connection failures
    down_until: float = 0.0


@dataclass
class EndpointPool:
    urls: list[str]
    max_concurrency: int
    cooldown_s: float = 0.5
    cooldown_max_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    endpoints: list[Endpoint] = field(init=False)
    _cursor: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.endpoints = [Endpoint(url) for url in self.urls]

    @property
    def slots(self) -> int:
        return self.max_concurrency * len(self.endpoints)

    def by_url(self, url: str) -> Endpoint:
        return next(e for e in self.endpoints if e.url == url)

    async def acquire(self, avoid: frozenset[str] = frozenset()) -> Endpoint:
        """Take a slot: the next endpoint in round-robin order that has one free and is not
        cooling down. Endpoints in `avoid` (those this request already failed on) are taken
        only when every other endpoint is cooling down. Waits while no endpoint qualifies."""
        while True:
            chosen = self._pick(avoid)
            if chosen is not None:
                chosen.in_flight += 1
                chosen.sent += 1
                chosen.peak = max(chosen.peak, chosen.in_flight)
                return chosen
            await asyncio.sleep(POLL_S)

    async def acquire_url(self, url: str) -> Endpoint:
        """A request that must go to one endpoint (e.g. loading an adapter into each server):
        it waits out that endpoint's cool-down but not its concurrency bound (such requests
        are few and are not generation)."""
        endpoint = self.by_url(url)
        wait = endpoint.down_until - self.clock()
        if wait > 0:
            await asyncio.sleep(wait)
        endpoint.in_flight += 1
        endpoint.sent += 1
        return endpoint

    def release(self, endpoint: Endpoint) -> None:
        endpoint.in_flight -= 1

    def refused(self, endpoint: Endpoint) -> None:
        """The endpoint refused a connection: leave it alone for a while, longer each time."""
        endpoint.refusals += 1
        delay = min(self.cooldown_max_s, self.cooldown_s * 2 ** (endpoint.refusals - 1))
        endpoint.down_until = self.clock() + delay

    def answered(self, endpoint: Endpoint) -> None:
        endpoint.refusals = 0
        endpoint.down_until = 0.0

    def _pick(self, avoid: frozenset[str]) -> Endpoint | None:
        now = self.clock()
        count = len(self.endpoints)
        order = [self.endpoints[(self._cursor + k) % count] for k in range(count)]
        up = [e for e in order if e.down_until <= now]
        # An endpoint this request failed on is used again only when no other one is up:
        # waiting for a healthy endpoint's slot beats spending a try where it just failed.
        preferred = [e for e in up if e.url not in avoid] or up
        free = [e for e in preferred if e.in_flight < self.max_concurrency]
        if not free:
            return None
        chosen = free[0]
        self._cursor = (self.endpoints.index(chosen) + 1) % count
        return chosen
