"""Cron math for schedules: validate an expression and zone, and compute fire times (no I/O).

An expression has 5 fields (``minute hour day-of-month month day-of-week``) or 6 with seconds
first. Fire times are found in the schedule's IANA zone from wall-clock time, with cronsim's
(Debian cron's) daylight-saving rules, and returned as UTC-aware datetimes:

* If the minute and hour fields both start with something other than ``*``, the schedule is
  "fixed-time": a wall time that a spring-forward skips fires once, at the first valid instant
  after it; a wall time that a fall-back repeats fires once, at its first occurrence.
* Otherwise it runs in elapsed time: ``*/15 * * * *`` fires every 15 real minutes, so it fires
  in both occurrences of a repeated hour.

Six-field expressions get the same rules: the five-field part finds each minute to fire in and
the seconds field is added on top (cronsim's own six-field mode would skip or double fixed times
on DST days).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo

from cronsim import CronSim
from cronsim.cronsim import Field

__all__ = [
    "CronError",
    "CronSchedule",
    "TimezoneError",
    "fires_after",
    "next_fire",
    "parse_schedule",
    "spec_hash",
]

_FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
_NUMERIC_RANGES = ("0-59", "0-59", "0-23", "1-31", "1-12", "0-7")
_BOUNDS = ((0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_ALLOWED = (
    "0-59",
    "0-59",
    "0-23",
    "1-31, L (last day of the month) or LW (last weekday of the month)",
    "1-12 or JAN-DEC",
    "0-7 or SUN-SAT (0 and 7 are Sunday), 5L (last Friday of the month) or MON#2 (2nd Monday)",
)
_FIELD_COUNT_HINT = "minute hour day-of-month month day-of-week"

# Field validation only needs cronsim's constructor, which does not look at the start time.
_PROBE_START = datetime(2000, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)
_ZERO = timedelta(0)
# cronsim only goes backwards (see _minutes) inside a repeated wall-clock period, which is
# at most a day long, so this many minute-level candidates in a row without a fire means a bug.
_MAX_SKIPPED_MINUTES = 3 * 24 * 60
# Zones with offset 0 and no transitions: cronsim has a fast path for datetime.UTC that skips
# its per-tick zone conversions; the fire times are the same.
_UTC_KEYS = frozenset(
    {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Universal", "Universal", "Etc/Zulu", "Zulu"}
)
# Present in the zone directory but not places: "localtime" follows the host's setting, which
# would make fire times depend on the machine; "Factory" means "zone not configured".
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


class CronError(ValueError):
    """An expression cronsim cannot run; says where and why."""

    def __init__(self, reason: str, position: int, field: str | None) -> None:
        super().__init__(f"{reason} (at position {position})")
        self.reason = reason
        self.position = position  # 0-based offset in the expression as written
        self.field = field  # None when no single field is to blame (e.g. the field count)


class TimezoneError(ValueError):
    """A time zone that is not an IANA zone name such as ``Europe/Berlin``."""


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A validated expression (fields joined by single spaces, upper-cased) and IANA zone."""

    expression: str
    timezone: str
    # Precomputed so next_fire does no parsing or zone lookup beyond cronsim's own.
    _zone: tzinfo = field(repr=False, compare=False)
    _five: str = field(repr=False, compare=False)  # the expression without its seconds field
    _offsets: tuple[timedelta, ...] = field(repr=False, compare=False)  # sorted seconds


def parse_schedule(expression: str, timezone: str) -> CronSchedule:
    """Validate ``expression`` and ``timezone``; raises CronError or TimezoneError."""
    tokens = _tokens(expression)
    normalized, five, seconds = _parse_expression(tokens)
    zone = _load_zone(timezone)
    schedule = CronSchedule(
        expression=normalized,
        timezone=timezone,
        _zone=UTC if timezone in _UTC_KEYS else zone,
        _five=five,
        _offsets=tuple(timedelta(seconds=s) for s in seconds),
    )
    if next_fire(schedule, _PROBE_START) is None:
        n = len(tokens)
        (dom_position, dom), (_, month), (_, dow) = tokens[n - 3 :]
        raise CronError(
            f"the expression never fires: no date has day-of-month {_clip(dom)}, "
            f"month {_clip(month)} and day-of-week {_clip(dow)} together within cronsim's "
            "50-year horizon; relax one of these fields",
            dom_position,
            "day-of-month",
        )
    return schedule


@functools.lru_cache(maxsize=4096)
def cached_schedule(expression: str, timezone: str) -> CronSchedule:
    """:func:`parse_schedule`, remembered: a runner parses the same few expressions over and
    over, and validation costs several cronsim constructions (errors are not cached)."""
    return parse_schedule(expression, timezone)


@functools.lru_cache(maxsize=16_384)
def cached_next_fire(schedule: CronSchedule, after: datetime) -> datetime | None:
    """:func:`next_fire`, remembered: schedules sharing an expression share their ticks."""
    return next_fire(schedule, after)


def next_fire(schedule: CronSchedule, after: datetime) -> datetime | None:
    """The first fire time strictly after the aware datetime ``after``, in UTC.

    None when the schedule does not fire within cronsim's horizon (50 years).
    """
    after_utc = _as_utc(after)
    offsets = schedule._offsets
    try:
        minutes = CronSim(schedule._five, _minute_iteration_start(schedule._zone, after_utc))
        for _ in range(_MAX_SKIPPED_MINUTES):
            minute = next(minutes).astimezone(UTC)
            for offset in offsets:
                fire = minute + offset
                if fire > after_utc:
                    return fire
    except (StopIteration, OverflowError):
        # StopIteration: nothing within cronsim's horizon; OverflowError: past year 9999.
        return None
    raise _stuck(schedule, after_utc)


def fires_after(schedule: CronSchedule, after: datetime) -> Iterator[datetime]:
    """Successive fire times strictly after ``after``, strictly increasing, in UTC.

    Endless for a schedule that keeps firing; the caller stops it.
    """
    last = _as_utc(after)
    offsets = schedule._offsets
    try:
        minutes = CronSim(schedule._five, _minute_iteration_start(schedule._zone, last))
    except OverflowError:
        return
    skipped = 0
    while True:
        try:
            minute = next(minutes).astimezone(UTC)
        except (StopIteration, OverflowError):
            return
        fired = False
        for offset in offsets:
            fire = minute + offset
            if fire > last:
                fired = True
                last = fire
                yield fire
        if fired:
            skipped = 0
        else:
            skipped += 1
            if skipped >= _MAX_SKIPPED_MINUTES:
                raise _stuck(schedule, last)


def spec_hash(expression: str, timezone: str) -> str:
    """A short, stable digest of the normalized expression and the zone, to detect changes."""
    normalized = " ".join(expression.split()).upper()
    # The normalized expression has no newline, so the joined text is unambiguous.
    digest = hashlib.sha256(f"cron-v1\n{normalized}\n{timezone}".encode())
    return digest.hexdigest()[:16]


def _as_utc(after: datetime) -> datetime:
    if after.utcoffset() is None:
        raise ValueError(f"after must be a timezone-aware datetime, got {after!r}")
    return after.astimezone(UTC)


def _minute_iteration_start(zone: tzinfo, after_utc: datetime) -> datetime:
    """Where to start cronsim so that the minute containing ``after`` is a candidate.

    cronsim ticks one second before matching, so start one second before the minute.
    The minute is floored in the zone, whose offset need not be whole minutes (old LMT).
    """
    local = after_utc.astimezone(zone)
    floored = local.replace(second=0, microsecond=0).astimezone(UTC)
    return (floored - _ONE_SECOND).astimezone(zone)


def _stuck(schedule: CronSchedule, at: datetime) -> RuntimeError:
    return RuntimeError(
        f"cronsim made no progress past {at.isoformat()} for {schedule.expression!r} "
        f"in {schedule.timezone}"
    )


# --- Validation ---------------------------------------------------------------------------


def _tokens(expression: str) -> list[tuple[int, str]]:
    """The fields as (offset, text), split where ``str.split()`` (and so cronsim) splits."""
    tokens: list[tuple[int, str]] = []
    start: int | None = None
    for i, ch in enumerate(expression):
        if ch.isspace():
            if start is not None:
                tokens.append((start, expression[start:i]))
                start = None
        elif start is None:
            start = i
    if start is not None:
        tokens.append((start, expression[start:]))
    return tokens


def _parse_expression(tokens: list[tuple[int, str]]) -> tuple[str, str, tuple[int, ...]]:
    """(normalized expression, its five-field part, sorted seconds) or CronError."""
    n = len(tokens)
    if n == 0:
        raise CronError(
            f"the cron expression is empty; write 5 fields ({_FIELD_COUNT_HINT}), "
            "e.g. '0 9 * * MON-FRI'",
            0,
            None,
        )
    if n not in (5, 6):
        raise CronError(
            f"expected 5 fields ({_FIELD_COUNT_HINT}) or 6 with seconds first, got {n}",
            tokens[6][0] if n > 6 else 0,
            None,
        )
    upper = [text.upper() for _, text in tokens]
    fields = list(Field)[6 - n :]
    for i, (position, text) in enumerate(tokens):
        if not _accepts(_probe(n, i, upper[i])):
            raise _field_error(n, i, position, text, fields[i])

    normalized = " ".join(upper)
    if not _accepts(normalized):
        # Every field is fine alone; cronsim's only cross-field check is that a day-of-month
        # combined (AND) with the months exists, e.g. "0 0 30 2 *".
        dom_position, dom = tokens[n - 3]
        month = tokens[n - 2][1]
        without_dom = [*upper[: n - 3], "*", *upper[n - 2 :]]
        if _accepts(" ".join(without_dom)):
            raise CronError(
                f"day-of-month {_clip(dom)} never occurs in the selected months ({_clip(month)}); "
                "pick a day every selected month has, or L for the last day of the month",
                dom_position,
                "day-of-month",
            )
        raise CronError(f"cronsim cannot run {_clip(normalized)!r}", 0, None)

    if n == 5:
        return normalized, normalized, (0,)
    # The seconds field holds only ints (tuples are for day-of-week's 5L and MON#2).
    seconds = sorted(s for s in Field.SECOND.parse(upper[0]) if isinstance(s, int))
    return normalized, " ".join(upper[1:]), tuple(seconds)


def _probe(n: int, index: int, text: str) -> str:
    """An expression with ``text`` as field ``index`` and everything else a wildcard."""
    parts = ["*"] * n
    if n == 6:
        parts[0] = "0"  # so a six-field probe never means "every second"
    parts[index] = text
    return " ".join(parts)


def _accepts(expression: str) -> bool:
    try:
        CronSim(expression, _PROBE_START)
    except Exception:  # any failure at all means cronsim cannot run it
        return False
    return True


def _field_error(n: int, index: int, position: int, text: str, fld: Field) -> CronError:
    """The first comma-separated item of a bad field that cronsim rejects on its own."""
    name = _FIELD_NAMES[fld]
    offset = position
    for item in text.split(","):
        upper = item.upper()
        if not _accepts(_probe(n, index, upper)):
            reason = _diagnose(fld, upper) or (
                f"{name} {_clip(upper)!r} is not valid; use {_ALLOWED[fld]}, or *, lists (1,5), "
                "ranges (1-5) and steps (*/15)"
            )
            return CronError(reason, offset, name)
        offset += len(item) + 1
    return CronError(
        f"{name} {_clip(text.upper())!r} is not valid; use {_ALLOWED[fld]}", position, name
    )


def _diagnose(fld: Field, s: str) -> str | None:
    """Why cronsim rejects the single (upper-cased) item ``s``, following its parser's order."""
    name = _FIELD_NAMES[fld]
    if s == "":
        return f"{name} has an empty list item; remove the extra comma"
    if fld is Field.DOW and "L" in s:
        value = s[:-1]
        if not s.endswith("L") or not _is_number(value):
            return (
                f"day-of-week {_clip(s)!r} is not valid; L must follow a single day number, "
                "e.g. 5L for the last Friday of the month"
            )
        return _value_problem(fld, value)
    if fld is Field.DOW and "#" in s:
        term, nth = s.split("#", 1)
        problem = _value_problem(fld, term)
        if problem is not None:
            return problem
        if not _is_number(nth) or not 1 <= _number(nth) <= 5:
            return (
                f"day-of-week {_clip(s)!r}: the number after # says which week of the month "
                "and must be 1-5, e.g. MON#2 for the second Monday"
            )
        return None
    if "/" in s:
        term, step = s.split("/", 1)
        if not _is_number(step):
            return f"the step {_clip(step)!r} in {name} must be a whole number, e.g. */15"
        if _number(step) == 0:
            return f"the step in {name} {_clip(s)!r} must be at least 1"
        return None if term == "*" else _diagnose(fld, term)
    if "-" in s:
        first, last = s.split("-", 1)
        problem = _value_problem(fld, first) or _value_problem(fld, last)
        if problem is not None:
            return problem
        if _value(fld, first) > _value(fld, last):
            return f"the range {_clip(s)!r} in {name} runs backwards; write the smaller value first"
        return None
    if fld is Field.DAY and s in ("L", "LW"):
        return None
    return _value_problem(fld, s)


def _value_problem(fld: Field, s: str) -> str | None:
    name = _FIELD_NAMES[fld]
    if (fld is Field.MONTH and s in _MONTH_NAMES) or (fld is Field.DOW and s in _DAY_NAMES):
        return None
    if not _is_number(s):
        if s == "":
            return f"{name} is missing a value; use {_ALLOWED[fld]}"
        if fld is Field.MONTH:
            return f"month {_clip(s)!r} is not a number or month name; use 1-12 or JAN-DEC"
        if fld is Field.DOW:
            return f"day-of-week {_clip(s)!r} is not a number or day name; use 0-7 or SUN-SAT"
        if fld is Field.DAY and s in ("L", "LW"):
            return f"day-of-month {s} stands alone; it cannot be part of a range or step"
        return f"{name} {_clip(s)!r} is not a number; use {_ALLOWED[fld]}"
    low, high = _BOUNDS[fld]
    if not low <= _number(s) <= high:
        return f"{name} {_clip(s.lstrip('0') or '0')} is out of range {_NUMERIC_RANGES[fld]}"
    return None


def _clip(s: str) -> str:
    """``s`` shortened for a message: a pasted wall of digits should not flood the log."""
    return s if len(s) <= 20 else f"{s[:17]}..."


def _is_number(s: str) -> bool:
    return s.isascii() and s.isdigit()


def _number(s: str) -> int:
    # Long digit strings are out of every range; int() of a huge one would raise instead.
    return int(s) if len(s) <= 6 else 10**6


def _value(fld: Field, s: str) -> int:
    if fld is Field.MONTH and s in _MONTH_NAMES:
        return _MONTH_NAMES.index(s) + 1
    if fld is Field.DOW and s in _DAY_NAMES:
        return _DAY_NAMES.index(s)
    return _number(s)


# --- Time zones ---------------------------------------------------------------------------


@functools.cache
def _known_zones() -> frozenset[str]:
    # Only names listed by the zone database count: ZoneInfo() also opens other files under
    # the zone directories (e.g. "posix/Europe/Berlin", "localtime"). Listing takes ~0.1 s,
    # hence the cache.
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def _load_zone(name: str) -> zoneinfo.ZoneInfo:
    known = _known_zones()
    if name in known:
        return zoneinfo.ZoneInfo(name)
    example = "use an IANA name such as 'Europe/Berlin', 'America/New_York' or 'UTC'"
    if not name.strip():
        raise TimezoneError(f"the time zone is empty; {example}")
    by_lower = {zone.lower(): zone for zone in known}
    if name.lower() in by_lower:  # zone names are case-sensitive
        guesses = [by_lower[name.lower()]]
    else:
        guesses = difflib.get_close_matches(name, sorted(known), n=3)
    hint = f" (did you mean {', '.join(repr(g) for g in guesses)}?)" if guesses else ""
    raise TimezoneError(f"unknown time zone {_clip(name)!r}; {example}{hint}")
