"""Small, fast sampling helpers over ``random.Random`` (weighted choice, Poisson, quotas).

All draws go through an explicit generator so that output depends only on the seed.
"""

from __future__ import annotations

import math
from bisect import bisect
from collections.abc import Sequence
from itertools import accumulate
from random import Random
from typing import Generic, TypeVar

__all__ = ["Quota", "Weighted", "poisson"]

T = TypeVar("T")


class Weighted(Generic[T]):
    """Choice among items with fixed weights, in O(log n) per draw."""

    __slots__ = ("_cum", "_total", "items")

    def __init__(self, items: Sequence[T], weights: Sequence[float]) -> None:
        self.items = list(items)
        self._cum = list(accumulate(weights))
        self._total = self._cum[-1]

    def pick(self, rng: Random) -> T:
        return self.items[bisect(self._cum, rng.random() * self._total)]

    def index(self, rng: Random) -> int:
        return bisect(self._cum, rng.random() * self._total)


def poisson(rng: Random, lam: float) -> int:
    """Knuth's method; the rates used here are small (a few events a year)."""
    if lam <= 0:
        return 0
    limit = math.exp(-lam)
    k, p = 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class Quota:
    """Draws cells (e.g. age band x sex) so that running counts track target shares.

    Households impose constraints (a mother is older than her children), so sampling each person
    independently from the pyramid would drift from it; weighting each feasible cell by how far
    it lags its target keeps the realised pyramid on the published one.
    """

    __slots__ = ("counts", "gain", "shares", "total")

    def __init__(self, shares: Sequence[float], gain: float) -> None:
        total = sum(shares)
        self.shares = [s / total for s in shares]
        self.counts = [0] * len(shares)
        self.total = 0
        self.gain = gain

    def add(self, cell: int, k: int) -> None:
        """Count ``k`` more draws of ``cell`` made outside ``pick``."""
        self.counts[cell] += k
        self.total += k

    def most_lagging(self) -> int:
        """The cell furthest below its target count (deterministic, exact in the long run)."""
        n = self.total + 1
        return max(range(len(self.shares)), key=lambda c: self.shares[c] * n - self.counts[c])

    def pick(self, rng: Random, feasible: Sequence[int], record: bool = True) -> int:
        n = self.total + 1
        weights = []
        for cell in feasible:
            share = self.shares[cell]
            lag = (share * n + 1.0) / (self.counts[cell] + 1.0)
            weights.append(share * lag**self.gain)
        total = sum(weights)
        if total <= 0:
            cell = feasible[int(rng.random() * len(feasible))]
        else:
            x = rng.random() * total
            cell = feasible[-1]
            for candidate, w in zip(feasible, weights, strict=True):
                x -= w
                if x < 0:
                    cell = candidate
                    break
        if record:
            self.counts[cell] += 1
            self.total += 1
        return cell
