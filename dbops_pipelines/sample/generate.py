"""Row generators of the sample database and `generate`, which runs them in load order.

Internal to `dbops_pipelines.sample` (use `appdb.generate`). Each table's generator takes
the `Layout` and yields blocks: (text in COPY text format, number of rows). Data comes
chunk by chunk, each chunk drawn from its own `Random` (`Layout.rng(table, chunk)`), so
memory use does not grow with the row count and the same seed gives the same bytes.
The three big tables are in `dbops_pipelines.sample.activity`.
"""

from __future__ import annotations

from datetime import datetime
from random import Random
from typing import Callable, Iterable, Iterator

from dbops_pipelines.sample.activity import gen_audit_events, gen_request_items, gen_requisitions
from dbops_pipelines.sample.fake import (
    NULL,
    Block,
    company_name,
    lines_block,
    locale,
    phone,
    pick8,
    pick16,
    postcode,
    sentences,
    slug,
    street,
)
from dbops_pipelines.sample.layout import DEFAULT_ANCHOR, Layout
from dbops_pipelines.sample.schema import SAMPLE_TABLES
from dbops_pipelines.sample.vocabulary import (
    CITIES,
    CURRENCY_POP,
    FIRST_NAMES,
    LAST_NAMES,
    PRODUCTS,
    ROLES,
    WORD_POP,
)


def _in_blocks(lines: Iterable[str], size: int = 2000) -> Iterator[Block]:
    """The lines in blocks of `size` (the last one shorter)."""
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= size:
            yield lines_block(batch)
            batch = []
    if batch:
        yield lines_block(batch)


def _gen_tenants(lay: Layout) -> Iterator[Block]:
    yield lines_block(["\t".join(row) for row in lay.tenant_rows])


def _gen_roles(lay: Layout) -> Iterator[Block]:
    yield lines_block([f"{i + 1}\t{name}\t{desc}" for i, (name, desc) in enumerate(ROLES)])


def _user_chunks(lay: Layout, table: str) -> Iterator[tuple[Random, range]]:
    """(rng, user indexes) of each chunk of users."""
    for start in range(0, lay.n_users, lay.USER_CHUNK):
        yield lay.rng(table, start), range(start, min(start + lay.USER_CHUNK, lay.n_users))


def _user_line(lay: Layout, rng: Random, u: int) -> str:
    clock = lay.clock
    t = lay.user_tenant[u]
    first = rng.choice(FIRST_NAMES)
    last = rng.choice(LAST_NAMES)
    sep = rng.choice((".", ".", ".", "_", ""))
    email = f"{first.lower()}{sep}{last.lower()}{u + 1}@{lay.tenant_domains[t]}"
    city, cc, pfmt = rng.choice(CITIES)
    created = rng.randrange(0, lay.t_anchor - 100 * 86400)
    login = rng.randrange(created, lay.t_anchor)
    deleted = rng.random() < 0.05 and u != lay.tenant_admin(t)
    if deleted:
        del_at = lay.t_anchor - rng.randrange(60, 90 * 86400)
        created = min(created, del_at - 86400)
        login = min(login, del_at)
        del_at_s = clock.ts(del_at)
        del_by = str(lay.tenant_admin(t) + 1)
    else:
        del_at_s = del_by = NULL
    has_addr = rng.random() < 0.7
    return "\t".join([
        str(u + 1), str(t + 1), email, f"{first} {last}",
        phone(rng, cc) if rng.random() < 0.8 else NULL,
        street(rng) if has_addr else NULL,
        city if has_addr else NULL,
        postcode(rng, pfmt) if has_addr else NULL,
        cc, locale(cc), clock.ts(created),
        clock.ts(login) if rng.random() < 0.95 else NULL,
        del_at_s, del_by,
    ])


def _gen_users(lay: Layout) -> Iterator[Block]:
    for rng, users in _user_chunks(lay, "users"):
        yield lines_block([_user_line(lay, rng, u) for u in users])


def _user_role_lines(lay: Layout, rng: Random, u: int) -> list[str]:
    admin = lay.tenant_admin(lay.user_tenant[u])
    roles = {3}  # requester
    if u == admin:
        roles.add(1)
    r = rng.random()
    if r < 0.15:
        roles.add(2)
    elif r < 0.25:
        roles.add(4)
    elif r < 0.32:
        roles.add(5)
    elif r < 0.35:
        roles.add(6)
    elif r < 0.40:
        roles.add(7)
    elif r < 0.55:
        roles = {8}
    if rng.random() < 0.1:
        roles.add(rng.randrange(2, 9))
    granted = lay.clock.ts(rng.randrange(lay.t_history, lay.t_anchor))
    by = str(admin + 1) if u != admin else NULL
    return [f"{u + 1}\t{role}\t{granted}\t{by}" for role in sorted(roles)]


def _gen_user_roles(lay: Layout) -> Iterator[Block]:
    for rng, users in _user_chunks(lay, "user_roles"):
        yield lines_block([line for u in users for line in _user_role_lines(lay, rng, u)])


def _vendor_lines(lay: Layout) -> Iterator[str]:
    rng = lay.rng("vendors")
    for v, t in lay.with_tenant(lay.vendor_bounds):
        name = company_name(rng)
        city, cc, pfmt = rng.choice(CITIES)
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        dom = slug(name.rsplit(" ", 1)[0])[:30].strip("-") or "vendor"
        words = pick16(rng, WORD_POP, rng.randrange(0, 40))
        notes = sentences(rng, words, 0, len(words)) if words else NULL
        yield "\t".join([
            str(v + 1), str(t + 1), name,
            f"{cc}{rng.randrange(10**8, 10**10)}",
            f"{first} {last}",
            f"{first.lower()}.{last.lower()}@{dom}.example",
            phone(rng, cc), street(rng), city, postcode(rng, pfmt), cc,
            rng.choice(("14", "30", "30", "30", "45", "60", "60", "90")),
            notes, lay.clock.ts(rng.randrange(0, lay.t_anchor - 30 * 86400)),
        ])


_CONTRACT_KINDS = ("Framework agreement", "Supply agreement", "Service agreement",
                   "Master purchase agreement", "Maintenance contract", "Licence agreement")


def _contract_lines(lay: Layout) -> Iterator[str]:
    rng = lay.rng("contracts")
    clock = lay.clock
    for c, t in lay.with_tenant(lay.contract_bounds):
        vb, ve = lay.vendor_bounds[t], lay.vendor_bounds[t + 1]
        ub, ue = lay.user_bounds[t], lay.user_bounds[t + 1]
        start = rng.randrange(0, lay.t_anchor)
        end = start + rng.choice((365, 365, 730, 1095, 180, 90)) * 86400
        if end < lay.t_anchor:
            status = rng.choice(("expired", "expired", "terminated"))
        else:
            status = "active" if rng.random() < 0.9 else "draft"
        subject = rng.choice(PRODUCTS).replace("-", " ")
        words = pick16(rng, WORD_POP, rng.randrange(60, 200))
        yield "\t".join([
            str(c + 1), str(t + 1), str(rng.randrange(vb, ve) + 1),
            f"CT-{clock.date(start)[:4]}-{c + 1:06d}",
            f"{rng.choice(_CONTRACT_KINDS)} for {subject}",
            status, pick8(rng, CURRENCY_POP, 1)[0],
            str(rng.randrange(1000, 5_000_000) * 100),
            clock.date(start), clock.date(end),
            str(rng.randrange(ub, ue) + 1) if rng.random() < 0.9 else NULL,
            sentences(rng, words, 0, len(words)),
            clock.ts(max(0, start - rng.randrange(0, 60 * 86400))),
        ])


_GENERATORS: dict[str, Callable[[Layout], Iterator[Block]]] = {
    "public.tenants": _gen_tenants,
    "public.roles": _gen_roles,
    "public.users": _gen_users,
    "public.user_roles": _gen_user_roles,
    "public.vendors": lambda lay: _in_blocks(_vendor_lines(lay)),
    "public.contracts": lambda lay: _in_blocks(_contract_lines(lay)),
    "public.requisitions": gen_requisitions,
    "public.request_items": gen_request_items,
    "public.audit_events": gen_audit_events,
}


def table_blocks(lay: Layout, table: str) -> Iterator[Block]:
    """(COPY text block, rows in block) of one table of the layout."""
    return _GENERATORS[table](lay)


def generate(rows: int, seed: int = 42, anchor: datetime = DEFAULT_ANCHOR) -> Iterator[tuple[str, str, int]]:
    """Yield (table, COPY text block, rows in block) for every table in load order.

    Useful to measure the generator alone or to write the data elsewhere.
    """
    lay = Layout(rows, seed, anchor)
    for table in SAMPLE_TABLES:
        for block, n in table_blocks(lay, table):
            yield table, block, n
