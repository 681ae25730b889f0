"""Building blocks of the fake data: COPY text, fast batched randomness, timestamps, texts.

Internal to `dbops_pipelines.sample`. Batched draws take bytes from `Random.randbytes`
and index populations with `itemgetter` (C speed); every function takes the `Random` to
draw from, so the data only depends on the seed.
"""

from __future__ import annotations

import array
import sys
from datetime import datetime, timedelta
from operator import itemgetter
from random import Random

from dbops_pipelines.sample.vocabulary import (
    ADJECTIVES,
    CITIES,
    COMPANY_SUFFIXES,
    COUNTRIES,
    DEFAULT_COUNTRY,
    LAST_NAMES,
    NOUNS,
    PRODUCTS,
    STREET_NAMES,
    STREET_TYPES,
    UPPER,
    plural,
)

# ---------------------------------------------------------------------------------------
# COPY text format
# ---------------------------------------------------------------------------------------

NULL = "\\N"

Block = tuple[str, int]  # (lines in COPY text format, number of lines)


def lines_block(lines: list[str]) -> Block:
    """A block of the given lines (fields already joined with tabs)."""
    return "\n".join(lines) + "\n", len(lines)


def columns_block(cols: list[list[str]]) -> Block:
    """A block from a list of columns of equal length."""
    return "\n".join(map("\t".join, zip(*cols))) + "\n", len(cols[0])


# ---------------------------------------------------------------------------------------
# Batched randomness
# ---------------------------------------------------------------------------------------

_BIG_ENDIAN = sys.byteorder == "big"


def u16(rng: Random, k: int) -> array.array:
    """k random 16-bit unsigned integers."""
    a = array.array("H")
    a.frombytes(rng.randbytes(2 * k))
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def u32(rng: Random, k: int) -> array.array:
    """k random 32-bit unsigned integers."""
    a = array.array("I")
    if a.itemsize != 4:  # pragma: no cover - exotic platforms
        a = array.array("L")
        if a.itemsize != 4:
            return array.array("q", [rng.getrandbits(32) for _ in range(k)])
    a.frombytes(rng.randbytes(4 * k))
    if _BIG_ENDIAN:
        a.byteswap()
    return a


def _pick(pop: list, idx) -> list:
    if len(idx) == 1:
        return [pop[idx[0]]]
    return list(itemgetter(*idx)(pop))


def pick16(rng: Random, pop: list, k: int) -> list:
    """k items from a population of exactly 65536 entries."""
    return _pick(pop, u16(rng, k)) if k else []


def pick8(rng: Random, pop: list, k: int) -> list:
    """k items from a population of exactly 256 entries."""
    return _pick(pop, rng.randbytes(k)) if k else []


def ints(rng: Random, lo: int, hi: int, k: int) -> list[int]:
    """k integers uniform in [lo, hi] (inclusive); hi - lo < 2**32."""
    n = hi - lo + 1
    return [lo + ((x * n) >> 32) for x in u32(rng, k)]


# ---------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------


class Clock:
    """Formats timestamps given as seconds since `start` (midnight UTC) as timestamptz text."""

    def __init__(self, start: datetime, days: int) -> None:
        self.start = start
        d0 = start.date()
        # Dates run past the anchor too (contract end dates, needed-by dates).
        self.days = [(d0 + timedelta(days=i)).isoformat() for i in range(days + 1200)]
        self.hms = [f"{h:02d}:{m:02d}:{s:02d}+00" for h in range(24) for m in range(60) for s in range(60)]

    def ts(self, sec: int) -> str:
        d, s = divmod(sec, 86400)
        return self.days[d] + " " + self.hms[s]

    def date(self, sec: int) -> str:
        return self.days[sec // 86400]


# ---------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------


def sentences(rng: Random, words: list[str], pos: int, nwords: int) -> str:
    """Text of nwords words taken from words[pos:], cut into capitalised sentences."""
    out = []
    end = pos + nwords
    lengths = rng.randbytes(8)
    i = 0
    while pos < end:
        n = 5 + lengths[i & 7] % 11
        i += 1
        chunk = words[pos:min(pos + n, end)]
        pos += n
        s = " ".join(chunk)
        out.append(s[0].upper() + s[1:] + ".")
    return " ".join(out)


def postcode(rng: Random, fmt: str) -> str:
    return "".join(
        str(rng.randrange(10)) if c == "#" else rng.choice(UPPER) if c == "A" else c for c in fmt
    )


def phone(rng: Random, country: str) -> str:
    code = COUNTRIES.get(country, DEFAULT_COUNTRY)[0]
    return f"{code} {rng.randrange(100, 999)} {rng.randrange(100, 999)} {rng.randrange(1000, 9999)}"


def locale(country: str) -> str:
    return COUNTRIES.get(country, DEFAULT_COUNTRY)[1]


def street(rng: Random) -> str:
    return f"{rng.randrange(1, 2500)} {rng.choice(STREET_NAMES)} {rng.choice(STREET_TYPES)}"


def company_name(rng: Random) -> str:
    r = rng.random()
    if r < 0.35:
        base = f"{rng.choice(LAST_NAMES)} {plural(rng.choice(NOUNS)).title()}"
    elif r < 0.6:
        base = f"{rng.choice(LAST_NAMES)} & {rng.choice(LAST_NAMES)}"
    elif r < 0.8:
        base = f"{rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS).title()}"
    else:
        base = f"{rng.choice(CITIES)[0]} {rng.choice(PRODUCTS).replace('-', ' ').title()}"
    return f"{base} {rng.choice(COMPANY_SUFFIXES)}"


def slug(text: str) -> str:
    out = []
    for ch in text.lower():
        out.append(ch if ch.isascii() and ch.isalnum() else "-")
    return "-".join(filter(None, "".join(out).split("-")))
