"""The stored form of a rollup: counter field names and the integer units they hold.

A run's rollup (and a user's window, see domain.windows) is stored as a flat map of
integer counters so that applying a batch is a series of HINCRBY calls: commutative,
associative and exact, hence independent of arrival order and of how entries fall into
batches. Custom values are fixed-point with ``CUSTOM_DECIMALS`` decimals, kept as two
counters (whole units and nano-units) so that sums stay exact up to the 64-bit range of
whole units; durations are integer microseconds. Pure: it knows field names, not Redis.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from functools import lru_cache

# Stored per model: `total` only as its excess over prompt + completion (non-zero just for
# entries that carry a bare total), so the common entry costs one counter less.
_STORED_TOKEN_TYPES = ("prompt", "completion", "reasoning", "cached", "cacheWrite", "totalExtra")
# Stored per tool / sub-agent type: `calls` is ok + fail, so it is not stored.
_STORED_CALL_STATS = ("ok", "fail", "us")

# Field tags of the run hash. Parts are joined with "|" after escaping "%" and "|", so
# user-supplied names (models, tools, custom types) may contain any character without
# ambiguity, and the Lua payload carries them without JSON escaping.
F_COUNT = "n"
F_STARTED = "ts0"
F_UPDATED = "ts1"
F_USER = "user"
F_TENANT = "tenant"
F_AGENT = "agent"
# Totals over models and tools, beside the detailed fields: what alert rules compare (the
# same names in a user's windows, see domain.windows)
F_COST_TOTAL = "ct"
F_TOKENS_TOTAL = "tt"
F_TOOL_OK = "to"
F_TOOL_FAIL = "tf"
T_TOKENS = "tk|"
T_COST = "c|"
T_TOOL = "tl|"
T_SUBAGENT = "sa|"
T_CUSTOM = "x|"  # whole units of a custom metric's sum
T_CUSTOM_NANO = "xn|"  # the nano-units beside them: sum = units + nano / 10**9

#: Custom values are summed exactly at this many decimals (finer digits are rounded
#: half-even when an entry is accepted).
CUSTOM_DECIMALS = 9
CUSTOM_SCALE = 1_000_000_000  # 10**CUSTOM_DECIMALS
_FLOAT_EXACT = 9_007_199_254_740_992  # 2**53


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace("|", "%7C")


def _unescape(part: str) -> str:
    return part.replace("%7C", "|").replace("%25", "%")


@lru_cache(maxsize=65536)
def field_name(tag: str, *parts: str) -> str:
    """A counter field: its tag, then its parts escaped and joined with ``|``.

    >>> field_name(T_TOKENS, "gpt|4", "prompt")
    'tk|gpt%7C4|prompt'
    >>> field_name(T_TOOL, "search", "ok")
    'tl|search|ok'
    """
    return tag + "|".join(_escape(p) for p in parts)


def field_parts(name: str, tag: str) -> list[str]:
    """The unescaped parts of a field known to start with ``tag``.

    >>> field_parts("tk|gpt%7C4|prompt", T_TOKENS)
    ['gpt|4', 'prompt']
    """
    return [_unescape(p) for p in name[len(tag) :].split("|")]


@lru_cache(maxsize=65536)
def parse_field(name: str) -> tuple[str, tuple[str, ...]]:
    """A counter field's tag (up to its first ``|``, inclusive) and unescaped parts.

    >>> parse_field("tk|gpt%7C4|prompt")
    ('tk|', ('gpt|4', 'prompt'))
    >>> parse_field("n")
    ('n', ())
    """
    tag, sep, rest = name.partition("|")
    if not sep:
        return name, ()
    return tag + sep, tuple(_unescape(p) for p in rest.split("|"))


@lru_cache(maxsize=16384)
def token_fields(model: str) -> tuple[str, ...]:
    """The six stored token fields of a model, then its cost field.

    >>> token_fields("gpt-4o")[-2:]
    ('tk|gpt-4o|totalExtra', 'c|gpt-4o')
    """
    return (
        *(field_name(T_TOKENS, model, t) for t in _STORED_TOKEN_TYPES),
        field_name(T_COST, model),
    )


@lru_cache(maxsize=16384)
def custom_fields(ctype: str, cname: str) -> tuple[str, str]:
    """A custom metric's two fields: whole units, then nano-units.

    >>> custom_fields("quality", "score")
    ('x|quality|score', 'xn|quality|score')
    """
    return field_name(T_CUSTOM, ctype, cname), field_name(T_CUSTOM_NANO, ctype, cname)


@lru_cache(maxsize=16384)
def call_fields(kind: str, name: str) -> tuple[str, str, str]:
    """A tool's (or, for any other kind, a sub-agent type's) ok, fail and us fields.

    >>> call_fields("tool", "search")
    ('tl|search|ok', 'tl|search|fail', 'tl|search|us')
    """
    tag = T_TOOL if kind == "tool" else T_SUBAGENT
    ok, fail, us = (field_name(tag, name, stat) for stat in _STORED_CALL_STATS)
    return ok, fail, us


def duration_to_us(duration_ms: float) -> int:
    """Durations are summed as integer microseconds so the sum is order-independent.

    Validation bounds ``durationMs`` (schemas.entry), so this is always finite.

    >>> duration_to_us(12.5)
    12500
    """
    return round(duration_ms * 1000)


def us_to_ms(us: int) -> int | float:
    """A summed duration for JSON: whole milliseconds as an integer.

    >>> us_to_ms(12000), us_to_ms(12500)
    (12, 12.5)
    """
    return us // 1000 if us % 1000 == 0 else us / 1000


def custom_to_nano(value: int | float) -> int:
    """A custom value as an integer of 10**-9 units, exact for what the producer wrote.

    A float is taken at its shortest round-trip decimal (``repr``), which is the literal
    of the JSON text for any literal with up to 15 significant digits, then rounded
    half-even to ``CUSTOM_DECIMALS`` decimals; so 0.1 counts as exactly 0.1, never as
    the binary double nearest to it.

    >>> custom_to_nano(0.1), custom_to_nano(3)
    (100000000, 3000000000)
    >>> custom_to_nano(0.0000000005), custom_to_nano(0.0000000015)
    (0, 2)
    """
    if isinstance(value, int):
        return value * CUSTOM_SCALE
    if value.is_integer() and -_FLOAT_EXACT < value < _FLOAT_EXACT:
        return int(value) * CUSTOM_SCALE
    scaled = Decimal(repr(value)).scaleb(CUSTOM_DECIMALS)
    return int(scaled.to_integral_value(ROUND_HALF_EVEN))


def nano_to_number(nano: int) -> int | float:
    """A custom sum for JSON: an integer when whole, else the nearest double (exact for
    sums of up to 15 significant digits; Redis keeps the exact fixed-point sum).

    >>> nano_to_number(3 * 100000000), nano_to_number(2 * CUSTOM_SCALE)
    (0.3, 2)
    """
    units, rest = divmod(nano, CUSTOM_SCALE)
    if rest == 0:
        return units
    return float(Decimal(nano).scaleb(-CUSTOM_DECIMALS))
