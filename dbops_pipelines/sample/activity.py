"""Generators of the three big tables: requisitions, request_items and audit_events.

Internal to `dbops_pipelines.sample` (see `generate`). They build each chunk column by
column from batched random draws (`fake.pick16` and friends), which is what makes
generation fast. requisitions and request_items share `Layout.req_chunks`, so totals,
tenants and times agree without keeping anything in memory.
"""

from __future__ import annotations

from typing import Iterator

from dbops_pipelines.sample.fake import NULL, Block, columns_block, ints, pick8, pick16, sentences, u32
from dbops_pipelines.sample.layout import Layout
from dbops_pipelines.sample.vocabulary import (
    ADJ_POP,
    COLOUR_POP,
    CURRENCY_POP,
    DEPT_POP,
    EVENT_POP,
    EVENT_TYPES,
    MATERIAL_POP,
    NOUN_POP,
    PRODUCT_POP,
    STATUS_POP,
    TRANSITIONS,
    UA_POP,
    UNIT_POP,
    UPPER,
    WORD_POP,
    plural,
)


def _columns(n: int) -> list[list[str]]:
    return [[] for _ in range(n)]


def _title(tl: int, noun: str, adj: str, product: str, dept: str) -> str:
    if tl == 0:
        return f"{adj.capitalize()} {product} for {noun}"
    if tl == 1:
        return f"{product.capitalize()} {plural(noun)}"
    if tl == 2:
        return f"{noun.capitalize()} {product} ({dept})"
    return f"Replacement {product} - {adj} {noun}"


def gen_requisitions(lay: Layout) -> Iterator[Block]:
    clock = lay.clock
    for chunk, start, requesters, counts, qtys, prices, jit in lay.req_chunks():
        n = len(requesters)
        rng = lay.rng("requisitions", chunk)
        # Totals from the items.
        totals = []
        k = 0
        for c in counts:
            totals.append(str(sum(qtys[j] * prices[j] for j in range(k, k + c))))
            k += c
        sel = u32(rng, n)
        title_len = rng.randbytes(n)
        just_len = rng.randbytes(n)
        nj = sum(12 + b % 56 for b in just_len)
        words = pick16(rng, WORD_POP, nj)
        tw = pick16(rng, NOUN_POP, n)
        ta = pick16(rng, ADJ_POP, n)
        tp = pick16(rng, PRODUCT_POP, n)
        status = pick8(rng, STATUS_POP, n)
        currency = pick8(rng, CURRENCY_POP, n)
        dept = pick8(rng, DEPT_POP, n)
        prio = rng.randbytes(n)
        ids, tenants, reqs, apprs, vendors, contracts, titles, justs, ccs, prios, needed, created, updated = \
            _columns(13)
        pos = 0
        for r in range(n):
            i = start + r
            u = requesters[r]
            t = lay.user_tenant[u]
            s = sel[r]
            ids.append(str(i + 1))
            tenants.append(str(t + 1))
            reqs.append(str(u + 1))
            ub, ue = lay.user_bounds[t], lay.user_bounds[t + 1]
            st = status[r]
            if st in ("draft", "submitted", "cancelled"):
                apprs.append(NULL)
            else:
                apprs.append(str(ub + (s % (ue - ub)) + 1))
            vb, ve = lay.vendor_bounds[t], lay.vendor_bounds[t + 1]
            if (s >> 8) & 7:
                vendors.append(str(vb + ((s >> 11) % (ve - vb)) + 1))
                if (s >> 24) & 3 == 0:
                    cb, ce = lay.contract_bounds[t], lay.contract_bounds[t + 1]
                    contracts.append(str(cb + ((s >> 4) % (ce - cb)) + 1))
                else:
                    contracts.append(NULL)
            else:
                vendors.append(NULL)
                contracts.append(NULL)
            titles.append(_title(title_len[r] % 4, tw[r], ta[r], tp[r], dept[r]))
            nw = 12 + just_len[r] % 56
            justs.append(sentences(rng, words, pos, nw))
            pos += nw
            ccs.append(f"{dept[r]}-{1000 + (s >> 16) % 9000}")
            prios.append("3" if prio[r] < 150 else str(1 + prio[r] % 5))
            ct = lay.req_time(i, jit[r])
            created.append(clock.ts(ct))
            needed.append(clock.date(ct + (7 + prio[r] % 60) * 86400) if prio[r] & 1 else NULL)
            updated.append(clock.ts(min(lay.t_anchor - 1, ct + (s >> 12) % (20 * 86400))) if st != "draft" else created[-1])
        yield columns_block([ids, tenants, reqs, apprs, vendors, contracts, titles, justs, status, prios,
                             ccs, currency, totals, needed, created, updated])


_SIZE_UNITS = ("mm", "cm", "inch", "GB", "W", "ml")


def _item_description(shape: int, x: int, product: str, adj: str, material: str, colour: str) -> str:
    if shape == 0:
        return f"{adj.capitalize()} {product}, {colour}"
    if shape == 1:
        return f"{product.capitalize()}, {material}, {colour}, model {UPPER[(x >> 22) % 24]}{(x >> 7) % 1000}"
    if shape == 2:
        return f"{product.capitalize()} ({(x >> 9) % 64 + 1} {_SIZE_UNITS[(x >> 15) % 6]})"
    if shape == 3:
        return f"{material.capitalize()} {product} - {adj}"
    return f"{product.capitalize()}"


def gen_request_items(lay: Layout) -> Iterator[Block]:
    clock = lay.clock
    item_id = 0
    for chunk, start, requesters, counts, qtys, prices, jit in lay.req_chunks():
        rng = lay.rng("request_items", chunk)
        k = len(qtys)
        prod = pick16(rng, PRODUCT_POP, k)
        adj = pick16(rng, ADJ_POP, k)
        mat = pick8(rng, MATERIAL_POP, k)
        col = pick8(rng, COLOUR_POP, k)
        unit = pick8(rng, UNIT_POP, k)
        shape = rng.randbytes(k)
        nums = u32(rng, k)
        extra_len = rng.randbytes(k)
        nx = sum(b % 8 for b in extra_len)
        words = pick16(rng, WORD_POP, nx)
        ids, tens, reqids, lines_, skus, descs, created = _columns(7)
        j = 0
        pos = 0
        for r, c in enumerate(counts):
            i = start + r
            t1 = str(lay.user_tenant[requesters[r]] + 1)
            rid = str(i + 1)
            ts = clock.ts(lay.req_time(i, jit[r]) + 60 * (1 + r % 30))
            for line in range(1, c + 1):
                item_id += 1
                x = nums[j]
                ids.append(str(item_id))
                tens.append(t1)
                reqids.append(rid)
                lines_.append(str(line))
                p = prod[j]
                skus.append(f"{p[:3].upper()}-{x % 100000:05d}-{UPPER[(x >> 17) % 24]}")
                d = _item_description(shape[j] % 5, x, p, adj[j], mat[j], col[j])
                ne = extra_len[j] % 8
                if ne:
                    d = d + "; " + " ".join(words[pos:pos + ne])
                    pos += ne
                descs.append(d)
                created.append(ts)
                j += 1
        yield columns_block([ids, tens, reqids, lines_, skus, descs, list(map(str, qtys)), unit,
                             list(map(str, prices)), created])


def _entity_id(lay: Layout, ent: str, x: int, u: int) -> int:
    """1-based id of the event's entity (0: none), from random bits x and actor u."""
    if ent == "requisition":
        return 1 + (x >> 6) % lay.n_requisitions
    if ent == "request_item":
        return 1 + (x >> 6) % (3 * lay.n_requisitions)
    if ent == "user":
        return u + 1
    if ent == "vendor":
        return 1 + (x >> 6) % lay.n_vendors
    if ent == "contract":
        return 1 + (x >> 6) % lay.n_contracts
    return 0


def _ip(ip: int) -> str:
    if ip & 3:
        return f"10.{(ip >> 8) & 255}.{(ip >> 16) & 255}.{(ip >> 24) or 1}"
    return f"{64 + (ip >> 8) % 150}.{(ip >> 16) & 255}.{(ip >> 24) & 255}.{1 + (ip & 252)}"


def gen_audit_events(lay: Layout) -> Iterator[Block]:
    clock = lay.clock
    span = lay.t_anchor - lay.t_history
    n_total = lay.n_audit
    step = max(1, span // n_total)
    for start in range(0, n_total, lay.AUDIT_CHUNK):
        n = min(lay.AUDIT_CHUNK, n_total - start)
        rng = lay.rng("audit_events", start)
        actors = ints(rng, 0, lay.n_users - 1, n)
        ev = pick8(rng, EVENT_POP, n)
        ua = pick8(rng, UA_POP, n)
        nums = u32(rng, n)
        nums2 = u32(rng, n)
        ips = u32(rng, n)
        clen = rng.randbytes(n)
        nw = sum(b % 24 for b in clen)
        words = pick16(rng, WORD_POP, nw)
        st_from = pick8(rng, STATUS_POP, n)
        st_to = pick8(rng, STATUS_POP, n)
        ids, tens, acts, ets, ents, eids, pays, created = _columns(8)
        pos = 0
        for r in range(n):
            i = start + r
            u = actors[r]
            t = lay.user_tenant[u]
            et, ent, _ = EVENT_TYPES[ev[r]]
            x = nums[r]
            ids.append(str(i + 1))
            tens.append(str(t + 1))
            acts.append(str(u + 1) if x & 63 else NULL)
            ets.append(et)
            ents.append(ent)
            eid = _entity_id(lay, ent, x, u)
            eids.append(str(eid) if eid else NULL)
            y = nums2[r]
            req_id = f"{y:08x}-{x & 0xffff:04x}"
            cl = clen[r] % 24
            if et == "user.login":
                payload = f'{{"request_id": "{req_id}", "method": "{("password", "sso", "sso", "sso", "api_key")[y % 5]}", "mfa": {("true", "false")[(y >> 3) & 1]}, "session_minutes": {(y >> 4) % 480}}}'
            elif et.endswith(("approved", "rejected", "submitted", "updated")):
                frm, to = TRANSITIONS.get(et) or (st_from[r], st_to[r])
                payload = f'{{"request_id": "{req_id}", "changes": {{"status": ["{frm}", "{to}"], "total_cents": [{(y >> 4) % 900000}, {(y >> 2) % 900000}]}}, "comment": "{" ".join(words[pos:pos + cl])}"}}'
                pos += cl
            elif ent in ("requisition", "request_item"):
                payload = f'{{"request_id": "{req_id}", "source": "{("web", "web", "mobile", "api", "import")[y % 5]}", "note": "{" ".join(words[pos:pos + cl])}", "amount_cents": {(y >> 3) % 2000000}}}'
                pos += cl
            else:
                payload = f'{{"request_id": "{req_id}", "source": "{("web", "mobile", "api")[y % 3]}", "fields": {(y >> 4) % 12}}}'
            pays.append(payload)
            created.append(clock.ts(lay.t_history + i * span // n_total + (y >> 8) % step))
        yield columns_block([ids, tens, acts, ets, ents, eids, list(map(_ip, ips)), ua, pays, created])
