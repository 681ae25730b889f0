"""Layout of a sample database: how many rows of each table, which ids belong to which
tenant, the time line, and the per-chunk data the requisitions and request_items share.

Internal to `dbops_pipelines.sample`.
"""

from __future__ import annotations

import array
from datetime import datetime, timedelta, timezone
from random import Random
from typing import Iterator

from dbops_pipelines.sample.fake import Clock, company_name, ints, slug, u16, u32
from dbops_pipelines.sample.vocabulary import CITIES, expand

# Default moment the data ends at: a fixed date, so the same seed gives the same bytes.
DEFAULT_ANCHOR = datetime(2025, 6, 30, tzinfo=timezone.utc)

_ITEM_COUNTS = expand([1, 2, 3, 4, 5, 6, 8, 10], [20, 22, 20, 15, 10, 7, 4, 2], 256)
_QTY_POP = expand([1, 2, 3, 4, 5, 6, 10, 12, 20, 24, 50, 100],
                  [40, 15, 8, 6, 8, 3, 6, 4, 3, 2, 3, 2], 256)


def _price(x: int) -> int:
    """Unit price in cents from a 16-bit random value: log-uniform 0.50 .. 5000.00."""
    cents = int(50 * (10 ** (4 * x / 65536)))
    if cents > 1000:
        cents = cents // 100 * 100 - (1 if x & 1 else 0)  # 129.99, 250.00, ...
    return cents


class Layout:
    REQ_CHUNK = 2000
    AUDIT_CHUNK = 4000
    USER_CHUNK = 2000
    # Days of history before the anchor covered by the data.
    HISTORY_DAYS = 1095

    def __init__(self, rows: int, seed: int, anchor: datetime) -> None:
        if rows < 1:
            raise ValueError("rows must be >= 1")
        self.rows = rows
        self.seed = seed
        self.anchor = anchor.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        self.n_tenants = max(3, rows // 1000)
        self.n_users = max(self.n_tenants * 4, rows // 10)
        self.n_vendors = max(self.n_tenants * 2, rows // 20)
        self.n_contracts = max(self.n_tenants, rows // 10)
        self.n_requisitions = rows
        self.n_audit = 2 * rows
        rng = Random(f"{seed}/layout")
        # Tenants of uneven sizes (a few big ones, many small ones).
        weights = [rng.lognormvariate(0.0, 0.8) for _ in range(self.n_tenants)]
        self.user_bounds = self._bounds(weights, self.n_users, 4)
        self.vendor_bounds = self._bounds(weights, self.n_vendors, 2)
        self.contract_bounds = self._bounds(weights, self.n_contracts, 1)
        # tenant (0-based) of each user (0-based): one byte per user would not do for >255
        self.user_tenant = array.array("i", bytes(4 * self.n_users))
        for u, t in self.with_tenant(self.user_bounds):
            self.user_tenant[u] = t
        self.clock = Clock(self.anchor - timedelta(days=self.HISTORY_DAYS + 400), self.HISTORY_DAYS + 400)
        # Offsets (seconds since clock start) of interesting moments.
        self.t_anchor = (self.HISTORY_DAYS + 400) * 86400
        self.t_history = 400 * 86400  # start of requisition / audit history
        self._make_tenants()

    def _make_tenants(self) -> None:
        rng = self.rng("tenants")
        used: set[str] = set()
        plans = ["free", "team", "team", "business", "business", "business", "enterprise"]
        self.tenant_rows: list[list[str]] = []
        self.tenant_domains: list[str] = []
        for t in range(self.n_tenants):
            name = company_name(rng)
            s = slug(name)
            if s in used:
                s = f"{s}-{t + 1}"
            used.add(s)
            _city, cc, _ = rng.choice(CITIES)
            created = rng.randrange(0, self.t_history)
            self.tenant_domains.append(s + ".example")
            self.tenant_rows.append([str(t + 1), name, s, s + ".example", cc, rng.choice(plans),
                                     self.clock.ts(created)])

    @staticmethod
    def _bounds(weights: list[float], total: int, minimum: int) -> list[int]:
        """Cumulative boundaries splitting `total` ids over tenants by weight, each >= minimum."""
        n = len(weights)
        spare = total - minimum * n
        wsum = sum(weights)
        bounds = [0]
        acc = 0.0
        for i, w in enumerate(weights):
            acc += w
            bounds.append(round(acc / wsum * spare) + minimum * (i + 1))
        bounds[-1] = total
        return bounds

    @staticmethod
    def with_tenant(bounds: list[int]) -> Iterator[tuple[int, int]]:
        """(index, tenant) for every 0-based index split over tenants by `bounds`."""
        for t in range(len(bounds) - 1):
            for i in range(bounds[t], bounds[t + 1]):
                yield i, t

    def rng(self, *parts: object) -> Random:
        return Random("/".join([str(self.seed), *map(str, parts)]))

    def tenant_admin(self, t: int) -> int:
        """0-based user index of the tenant's first (never deleted) administrator."""
        return self.user_bounds[t]

    def req_time(self, i: int, jitter: int) -> int:
        """created_at of requisition i: increasing with the id over the history window."""
        span = self.t_anchor - self.t_history
        n = self.n_requisitions
        return self.t_history + (i * span) // n + jitter % max(1, span // n + 1)

    def req_chunks(self) -> Iterator[tuple[int, int, list[int], list[int], list[int], list[int], array.array]]:
        """Per-chunk data shared by the requisitions and request_items passes.

        Yields, for each chunk of requisitions, (chunk number, first requisition index,
        requester user indexes, item counts, item quantities, item unit prices, created_at
        jitter).
        """
        for chunk, start in enumerate(range(0, self.n_requisitions, self.REQ_CHUNK)):
            n = min(self.REQ_CHUNK, self.n_requisitions - start)
            rng = self.rng("reqmeta", chunk)
            requesters = [(x * self.n_users) >> 16 for x in u16(rng, n)] if self.n_users <= 65536 else \
                ints(rng, 0, self.n_users - 1, n)
            counts = [_ITEM_COUNTS[b] for b in rng.randbytes(n)]
            k = sum(counts)
            qtys = [_QTY_POP[b] for b in rng.randbytes(k)]
            prices = [_price(x) for x in u16(rng, k)]
            jitter = u32(rng, n)
            yield chunk, start, requesters, counts, qtys, prices, jitter
