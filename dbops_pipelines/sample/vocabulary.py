"""Fixed vocabulary of the sample database and the weighted populations drawn from it.

Internal to `dbops_pipelines.sample` (the public API is `appdb`). Nothing here depends on
the seed: the long word lists live in `words/*.txt` (their order sets the frequencies, so
editing them changes the generated data), the short weighted lists below.

A population is a list of exactly 65536 (drawn with 16 random bits) or 256 (8 bits)
entries in which each item appears in proportion to its weight; see `expand`.
"""

from __future__ import annotations

from importlib.resources import files
from random import Random

# ---------------------------------------------------------------------------------------
# Word lists
# ---------------------------------------------------------------------------------------


def _lines(name: str) -> list[str]:
    """Lines of words/<name>, without blank lines and '#' comment lines."""
    text = files("dbops_pipelines.sample").joinpath("words", name).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _words(name: str) -> list[str]:
    return " ".join(_lines(name)).split()


FUNCTION_WORDS = _words("function_words.txt")
NOUNS = _words("nouns.txt")
ADJECTIVES = _words("adjectives.txt")
VERBS = _words("verbs.txt")
PRODUCTS = _words("products.txt")  # '-' stands for a space
MATERIALS = _words("materials.txt")
COLOURS = _words("colours.txt")
FIRST_NAMES = _words("first_names.txt")
LAST_NAMES = _words("last_names.txt")
STREET_NAMES = _words("street_names.txt")
# (city, country code, postal code format: '#' = digit, 'A' = letter)
CITIES: list[tuple[str, str, str]] = [tuple(line.split("|")) for line in _lines("cities.txt")]  # type: ignore[misc]
USER_AGENTS = _lines("user_agents.txt")

UNITS = ["pcs"] * 12 + ["box"] * 3 + ["pack"] * 3 + ["set", "pair", "roll", "kg", "m", "l", "hour", "licence", "month"]

STREET_TYPES = ["Street", "Street", "Road", "Avenue", "Lane", "Drive", "Way", "Boulevard",
                "Court", "Place", "Parkway", "Square", "Terrace", "Close"]

COMPANY_SUFFIXES = ["Ltd", "Inc", "LLC", "GmbH", "B.V.", "S.A.", "AG", "Group", "Corp",
                    "& Co", "Partners", "Holdings", "Solutions", "Supplies", "Services",
                    "Industries", "Systems", "Trading"]

CURRENCIES = ["USD"] * 5 + ["EUR"] * 4 + ["GBP"] * 2 + ["CHF", "SEK", "PLN", "CAD"]

COST_CENTER_DEPTS = ["IT", "FIN", "HR", "OPS", "MKT", "RND", "FAC", "LOG", "SAL", "LEG",
                     "ENG", "ADM", "QA", "CS", "PRC"]

# country code -> (international dialling prefix, locale)
COUNTRIES = {
    "US": ("+1", "en-US"), "CA": ("+1", "en-CA"), "GB": ("+44", "en-GB"), "IE": ("+353", "en-IE"),
    "DE": ("+49", "de-DE"), "FR": ("+33", "fr-FR"), "NL": ("+31", "nl-NL"), "BE": ("+32", "nl-BE"),
    "ES": ("+34", "es-ES"), "PT": ("+351", "pt-PT"), "IT": ("+39", "it-IT"), "AT": ("+43", "de-AT"),
    "CH": ("+41", "de-CH"), "DK": ("+45", "da-DK"), "SE": ("+46", "sv-SE"), "NO": ("+47", "nb-NO"),
    "FI": ("+358", "fi-FI"), "PL": ("+48", "pl-PL"), "CZ": ("+420", "cs-CZ"), "HU": ("+36", "hu-HU"),
    "RO": ("+40", "ro-RO"), "BG": ("+359", "bg-BG"), "GR": ("+30", "el-GR"), "EE": ("+372", "et-EE"),
    "LV": ("+371", "lv-LV"), "LT": ("+370", "lt-LT"), "SI": ("+386", "sl-SI"), "HR": ("+385", "hr-HR"),
    "AU": ("+61", "en-AU"), "NZ": ("+64", "en-NZ"), "SG": ("+65", "en-SG"),
}
DEFAULT_COUNTRY = COUNTRIES["US"]

ROLES = [
    ("admin", "Full access to tenant configuration, users and all requisitions"),
    ("approver", "Approves or rejects submitted requisitions within the delegated budget"),
    ("requester", "Creates and submits purchase requisitions"),
    ("buyer", "Converts approved requisitions into purchase orders and manages vendors"),
    ("finance", "Reviews budgets, cost centers and invoices"),
    ("auditor", "Read-only access to requisitions, contracts and the audit log"),
    ("vendor_manager", "Maintains vendor records and contracts"),
    ("viewer", "Read-only access to own department's requisitions"),
]

EVENT_TYPES = [
    # (event_type, entity_type, weight)
    ("requisition.created", "requisition", 10),
    ("requisition.updated", "requisition", 8),
    ("requisition.submitted", "requisition", 8),
    ("requisition.approved", "requisition", 6),
    ("requisition.rejected", "requisition", 2),
    ("requisition.commented", "requisition", 5),
    ("request_item.added", "request_item", 7),
    ("request_item.updated", "request_item", 3),
    ("user.login", "user", 12),
    ("user.logout", "user", 4),
    ("user.password_changed", "user", 1),
    ("vendor.updated", "vendor", 2),
    ("contract.viewed", "contract", 3),
    ("report.exported", "report", 2),
]

TRANSITIONS = {
    "requisition.submitted": ("draft", "submitted"),
    "requisition.approved": ("submitted", "approved"),
    "requisition.rejected": ("submitted", "rejected"),
}

STATUSES = ["draft"] * 5 + ["submitted"] * 12 + ["approved"] * 20 + ["rejected"] * 5 + \
    ["ordered"] * 25 + ["received"] * 28 + ["cancelled"] * 5

UPPER = "ABCDEFGHJKLMNPQRSTUVWXYZ"

# ---------------------------------------------------------------------------------------
# Word forms
# ---------------------------------------------------------------------------------------

_UNCOUNTED = {"headquarters", "premises", "logistics", "staff", "software", "hardware",
              "equipment", "furniture", "freight", "infrastructure", "research", "feedback",
              "guidance", "evidence", "waste", "cash", "payroll", "compliance", "security",
              "safety", "maintenance", "procurement", "finance", "assistance", "insurance",
              "clearance", "retention", "encryption", "coverage", "attention", "availability"}


def _consonant_y(word: str) -> bool:
    return word.endswith("y") and word[-2:-1] not in ("a", "e", "o", "u")


def plural(noun: str) -> str:
    """Plural of a noun, or third person singular of a verb."""
    if noun in _UNCOUNTED:
        return noun
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if _consonant_y(noun):
        return noun[:-1] + "ies"
    return noun + "s"


def _verb_forms(verb: str) -> list[str]:
    stem = verb[:-1] if verb.endswith("e") else verb
    if _consonant_y(verb):
        past = verb[:-1] + "ied"
    elif verb.endswith("e"):
        past = verb + "d"
    else:
        past = verb + "ed"
    return [verb, past, stem + "ing", plural(verb)]


def _build_vocabulary() -> list[str]:
    """~3,000 words, most frequent first (function words, then a fixed shuffle)."""
    rest: list[str] = []
    for n in NOUNS:
        rest += [n, plural(n)]
    rest += ADJECTIVES
    for v in VERBS:
        rest += _verb_forms(v)
    rest += [p.replace("-", " ") for p in PRODUCTS]
    rest += MATERIALS + COLOURS
    rest += [c for c, _, _ in CITIES]
    rest += LAST_NAMES[:120]
    words = list(dict.fromkeys(FUNCTION_WORDS + rest))  # first occurrence of each, in order
    head, tail = words[: len(FUNCTION_WORDS)], words[len(FUNCTION_WORDS):]
    Random(20240601).shuffle(tail)
    return head + tail


# ---------------------------------------------------------------------------------------
# Populations
# ---------------------------------------------------------------------------------------


def expand(items: list, weights: list[float] | None = None, size: int = 65536) -> list:
    """A list of `size` entries in which each item appears in proportion to its weight
    (all weights equal if `weights` is None)."""
    if weights is None:
        weights = [1] * len(items)
    total = float(sum(weights))
    out: list = []
    acc = 0.0
    for item, w in zip(items, weights):
        acc += w
        upto = max(len(out) + 1, round(acc / total * size))
        out.extend([item] * (upto - len(out)))
    del out[size:]
    while len(out) < size:
        out.append(items[-1])
    return out


def _zipf(items: list, s: float, offset: float = 2.0, size: int = 65536) -> list:
    return expand(items, [1.0 / (i + offset) ** s for i in range(len(items))], size)


VOCAB = _build_vocabulary()
# 65536-entry populations (draw with 16 random bits).
WORD_POP = _zipf(VOCAB, 1.0, offset=4.0)  # free text: Zipf-distributed like natural language
NOUN_POP = _zipf(NOUNS, 0.6)
ADJ_POP = _zipf(ADJECTIVES, 0.6)
PRODUCT_POP = _zipf([p.replace("-", " ") for p in PRODUCTS], 0.7)
# 256-entry populations (draw with one random byte).
MATERIAL_POP = expand(MATERIALS, size=256)
COLOUR_POP = expand(COLOURS, size=256)
UNIT_POP = expand(UNITS, size=256)
CURRENCY_POP = expand(CURRENCIES, size=256)
STATUS_POP = expand(STATUSES, size=256)
DEPT_POP = expand(COST_CENTER_DEPTS, size=256)
EVENT_POP = expand(list(range(len(EVENT_TYPES))), [w for _, _, w in EVENT_TYPES], 256)
UA_POP = _zipf(USER_AGENTS, 1.0, offset=1.0, size=256)
