"""Cron math: DST rules in three zones, properties over random expressions, validation."""

from __future__ import annotations

import functools
import itertools
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from maestro.triggers.cron import (
    CronError,
    CronSchedule,
    TimezoneError,
    fires_after,
    next_fire,
    parse_schedule,
    spec_hash,
)

DENVER = zoneinfo.ZoneInfo("America/Denver")
LONDON = zoneinfo.ZoneInfo("Europe/London")
LORD_HOWE = zoneinfo.ZoneInfo("Australia/Lord_Howe")


def fires_on(schedule: CronSchedule, day: date) -> list[datetime]:
    """Every fire whose local date (in the schedule's zone) is ``day``."""
    zone = zoneinfo.ZoneInfo(schedule.timezone)
    start = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC) - timedelta(seconds=1)
    end = datetime.combine(day + timedelta(days=1), time(), tzinfo=zone).astimezone(UTC)
    return list(itertools.takewhile(lambda f: f < end, fires_after(schedule, start)))


def is_imaginary(wall: datetime, zone: zoneinfo.ZoneInfo) -> bool:
    aware = wall.replace(tzinfo=zone)
    return aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall


def is_ambiguous(wall: datetime, zone: zoneinfo.ZoneInfo) -> bool:
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    return first.utcoffset() != second.utcoffset() and not is_imaginary(wall, zone)


# --- DST: spring-forward gaps ----------------------------------------------------------------


@dataclass(frozen=True)
class GapCase:
    zone: zoneinfo.ZoneInfo
    wall: datetime  # a wall time the spring-forward skips
    fire_utc: datetime  # the first valid instant after it
    fire_wall: datetime


GAPS = [
    # Denver: 02:00 MST -> 03:00 MDT on the second Sunday of March.
    GapCase(DENVER, datetime(2026, 3, 8, 2, 30), datetime(2026, 3, 8, 9, 0, tzinfo=UTC),
            datetime(2026, 3, 8, 3, 0)),
    # London: 01:00 GMT -> 02:00 BST on the last Sunday of March.
    GapCase(LONDON, datetime(2026, 3, 29, 1, 30), datetime(2026, 3, 29, 1, 0, tzinfo=UTC),
            datetime(2026, 3, 29, 2, 0)),
    # Lord Howe: 02:00 (+10:30) -> 02:30 (+11:00) on the first Sunday of October.
    GapCase(LORD_HOWE, datetime(2026, 10, 4, 2, 15), datetime(2026, 10, 3, 15, 30, tzinfo=UTC),
            datetime(2026, 10, 4, 2, 30)),
]  # fmt: skip


@pytest.mark.parametrize("case", GAPS, ids=lambda c: str(c.zone))
def test_the_gap_cases_are_real_gaps(case: GapCase) -> None:
    assert is_imaginary(case.wall, case.zone)
    assert case.fire_utc.astimezone(case.zone).replace(tzinfo=None) == case.fire_wall
    # The fire is the very first instant of the new offset.
    before = (case.fire_utc - timedelta(seconds=1)).astimezone(case.zone)
    assert before.utcoffset() != case.fire_utc.astimezone(case.zone).utcoffset()


@pytest.mark.parametrize("six_fields", [False, True], ids=["5-field", "6-field"])
@pytest.mark.parametrize("case", GAPS, ids=lambda c: str(c.zone))
def test_a_time_in_the_spring_forward_gap_fires_once_at_the_first_valid_instant(
    case: GapCase, six_fields: bool
) -> None:
    expression = f"{case.wall.minute} {case.wall.hour} * * *"
    if six_fields:
        expression = f"0 {expression}"
    schedule = parse_schedule(expression, str(case.zone))
    assert fires_on(schedule, case.wall.date()) == [case.fire_utc]
    # The days around it fire at the wall time as usual.
    for day in (case.wall.date() - timedelta(days=1), case.wall.date() + timedelta(days=1)):
        expected = datetime.combine(day, case.wall.time(), tzinfo=case.zone).astimezone(UTC)
        assert fires_on(schedule, day) == [expected]


def test_seconds_are_added_to_the_minute_that_the_gap_moved() -> None:
    schedule = parse_schedule("0,15 30 2 * * *", "America/Denver")
    assert fires_on(schedule, date(2026, 3, 8)) == [
        datetime(2026, 3, 8, 9, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 8, 9, 0, 15, tzinfo=UTC),
    ]


def test_several_times_in_one_gap_fire_once() -> None:
    schedule = parse_schedule("15,45 2 * * *", "America/Denver")
    assert fires_on(schedule, date(2026, 3, 8)) == [datetime(2026, 3, 8, 9, 0, tzinfo=UTC)]
    # Chained next_fire (how the runner walks a schedule) agrees.
    first = next_fire(schedule, datetime(2026, 3, 8, 0, 0, tzinfo=UTC))
    assert first == datetime(2026, 3, 8, 9, 0, tzinfo=UTC)
    assert next_fire(schedule, first) == datetime(2026, 3, 9, 8, 15, tzinfo=UTC)


# --- DST: fall-back repeats ------------------------------------------------------------------


@dataclass(frozen=True)
class FoldCase:
    zone: zoneinfo.ZoneInfo
    wall: datetime  # a wall time the fall-back repeats
    first_utc: datetime  # its first occurrence
    second_utc: datetime


FOLDS = [
    # Denver: 02:00 MDT -> 01:00 MST on the first Sunday of November.
    FoldCase(DENVER, datetime(2026, 11, 1, 1, 30), datetime(2026, 11, 1, 7, 30, tzinfo=UTC),
             datetime(2026, 11, 1, 8, 30, tzinfo=UTC)),
    # London: 02:00 BST -> 01:00 GMT on the last Sunday of October.
    FoldCase(LONDON, datetime(2026, 10, 25, 1, 30), datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
             datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
    # Lord Howe: 02:00 (+11:00) -> 01:30 (+10:30) on the first Sunday of April.
    FoldCase(LORD_HOWE, datetime(2026, 4, 5, 1, 45), datetime(2026, 4, 4, 14, 45, tzinfo=UTC),
             datetime(2026, 4, 4, 15, 15, tzinfo=UTC)),
]  # fmt: skip


@pytest.mark.parametrize("case", FOLDS, ids=lambda c: str(c.zone))
def test_the_fold_cases_are_real_repeats(case: FoldCase) -> None:
    assert is_ambiguous(case.wall, case.zone)
    assert case.wall.replace(tzinfo=case.zone, fold=0).astimezone(UTC) == case.first_utc
    assert case.wall.replace(tzinfo=case.zone, fold=1).astimezone(UTC) == case.second_utc


@pytest.mark.parametrize("six_fields", [False, True], ids=["5-field", "6-field"])
@pytest.mark.parametrize("case", FOLDS, ids=lambda c: str(c.zone))
def test_a_repeated_time_fires_once_at_its_first_occurrence(
    case: FoldCase, six_fields: bool
) -> None:
    expression = f"{case.wall.minute} {case.wall.hour} * * *"
    if six_fields:
        expression = f"0 {expression}"
    schedule = parse_schedule(expression, str(case.zone))
    assert fires_on(schedule, case.wall.date()) == [case.first_utc]


@pytest.mark.parametrize("six_fields", [False, True], ids=["5-field", "6-field"])
@pytest.mark.parametrize("case", FOLDS, ids=lambda c: str(c.zone))
def test_starting_inside_the_second_occurrence_does_not_refire_the_first(
    case: FoldCase, six_fields: bool
) -> None:
    expression = f"{case.wall.minute} {case.wall.hour} * * *"
    if six_fields:
        expression = f"0 {expression}"
    schedule = parse_schedule(expression, str(case.zone))
    next_day = datetime.combine(case.wall.date() + timedelta(days=1), case.wall.time())
    expected = next_day.replace(tzinfo=case.zone).astimezone(UTC)
    # 10 minutes before the second occurrence: the wall time still lies ahead, but it fired
    # already (at the first occurrence), so the next fire is tomorrow's.
    for after in (case.second_utc - timedelta(minutes=10), case.second_utc):
        local = after.astimezone(case.zone)
        assert local.fold == 1
        assert next_fire(schedule, after) == expected
        assert next(fires_after(schedule, after)) == expected
        assert next(fires_after(schedule, local)) == expected


def test_an_elapsed_time_schedule_keeps_real_intervals_through_the_fall_back() -> None:
    schedule = parse_schedule("*/30 * * * *", "America/Denver")
    start = datetime(2026, 11, 1, 5, 59, tzinfo=UTC)  # 23:59 MDT the evening before
    fires = list(itertools.islice(fires_after(schedule, start), 8))
    assert fires[0] == datetime(2026, 11, 1, 6, 0, tzinfo=UTC)
    assert all(b - a == timedelta(minutes=30) for a, b in itertools.pairwise(fires))
    walls = [(f.astimezone(DENVER).strftime("%H:%M"), f.astimezone(DENVER).fold) for f in fires]
    assert walls == [
        ("00:00", 0),
        ("00:30", 0),
        ("01:00", 0),
        ("01:30", 0),
        ("01:00", 1),  # the repeated hour runs again, as real time goes on
        ("01:30", 1),
        ("02:00", 0),
        ("02:30", 0),
    ]


# --- next_fire / fires_after basics -----------------------------------------------------------


def test_next_fire_is_strictly_after_and_whole_seconds() -> None:
    every_second = parse_schedule("* * * * * *", "UTC")
    noon = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert next_fire(every_second, noon) == noon + timedelta(seconds=1)
    assert next_fire(every_second, noon + timedelta(microseconds=500_000)) == noon + timedelta(
        seconds=1
    )
    hourly = parse_schedule("0 * * * *", "Europe/London")
    fire = next_fire(hourly, noon)
    assert fire == noon + timedelta(hours=1)
    assert fire.tzinfo is UTC
    assert fire.microsecond == 0


def test_after_may_be_in_any_zone() -> None:
    schedule = parse_schedule("0 9 * * MON-FRI", "Europe/Berlin")
    instant = datetime(2026, 5, 1, 6, 59, 59, tzinfo=UTC)  # Friday
    tokyo = instant.astimezone(zoneinfo.ZoneInfo("Asia/Tokyo"))
    assert next_fire(schedule, tokyo) == next_fire(schedule, instant)
    assert next_fire(schedule, instant) == datetime(2026, 5, 1, 7, 0, tzinfo=UTC)


def test_the_minute_containing_after_is_a_candidate() -> None:
    schedule = parse_schedule("10,20 30 12 * * *", "UTC")
    after = datetime(2026, 5, 1, 12, 30, 15, tzinfo=UTC)
    assert next_fire(schedule, after) == after.replace(second=20)


def test_a_naive_after_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(parse_schedule("* * * * *", "UTC"), datetime(2026, 1, 1))


def test_no_fire_past_the_end_of_datetime() -> None:
    schedule = parse_schedule("0 0 * * *", "America/Denver")
    end = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    assert next_fire(schedule, end) is None
    assert list(fires_after(schedule, end)) == []


def chained(schedule: CronSchedule, after: datetime, count: int) -> list[datetime]:
    """Fires found by calling next_fire on the previous fire, as the runner does."""
    out: list[datetime] = []
    current = next_fire(schedule, after)
    while current is not None and len(out) < count:
        out.append(current)
        current = next_fire(schedule, current)
    return out


@pytest.mark.parametrize("expression", ["*/20 1-2 * * *", "0,20,40 1 * * *", "30 */10 1 * * *"])
def test_fires_after_matches_chained_next_fire_across_lord_howe_fall_back(
    expression: str,
) -> None:
    schedule = parse_schedule(expression, "Australia/Lord_Howe")
    start = datetime(2026, 4, 3, 0, 0, tzinfo=UTC)
    fires = list(itertools.islice(fires_after(schedule, start), 40))
    assert fires == chained(schedule, start, 40)


# --- Properties over random expressions ----------------------------------------------------


@dataclass(frozen=True)
class Expr:
    text: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]


def _item(low: int, high: int, names: tuple[str, ...] = ()) -> st.SearchStrategy[str]:
    """One list item of a field over low..high: value, range or step (names optional)."""

    def value(v: int) -> str:
        return names[v - low] if names and v - low < len(names) else str(v)

    number = st.integers(low, high)
    pair = st.tuples(number, number).map(sorted)
    step = st.integers(1, high - low + 1)
    return st.one_of(
        number.map(value),
        pair.map(lambda p: f"{value(p[0])}-{value(p[1])}"),
        step.map(lambda s: f"*/{s}"),
        st.tuples(number, step).map(lambda t: f"{t[0]}/{t[1]}"),
        st.tuples(pair, step).map(lambda t: f"{t[0][0]}-{t[0][1]}/{t[1]}"),
    )


def _values(text: str, low: int, high: int) -> frozenset[int]:
    """The set a numeric field stands for (independently of cronsim)."""
    result: set[int] = set()
    for item in text.split(","):
        body, _, step_text = item.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            start, end = low, high
        elif "-" in body:
            start, end = (int(x) for x in body.split("-"))
            if start == end and step_text:
                # cronsim's reading: a one-value range with a step steps from that value to
                # the field's maximum, like "a/n" (so "0-0/1" in hours is every hour).
                end = high
        else:
            start = int(body)
            end = high if step_text else start
        result.update(range(start, end + 1, step))
    return frozenset(result)


def _field(item: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.just("*"),
        item,
        st.lists(item, min_size=2, max_size=3).map(",".join),
    )


MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


@st.composite
def expressions(draw: st.DrawFn) -> Expr:
    second = draw(st.one_of(st.just("0"), _field(_item(0, 59)))) if draw(st.booleans()) else ""
    minute = draw(_field(_item(0, 59)))
    hour = draw(_field(_item(0, 23)))
    dom = draw(st.one_of(_field(_item(1, 31)), st.sampled_from(["L", "LW", "1,L"])))
    month_names = MONTHS if draw(st.booleans()) else ()
    month = draw(_field(_item(1, 12, month_names)))
    dow = draw(
        st.one_of(
            _field(_item(0, 7, DAYS if draw(st.booleans()) else ())),
            st.sampled_from(["5L", "MON#2", "1#1,FRI#5", "0L"]),
        )
    )
    text = " ".join(part for part in (second, minute, hour, dom, month, dow) if part)
    return Expr(
        text=text,
        seconds=_values(second, 0, 59) if second else frozenset({0}),
        minutes=_values(minute, 0, 59),
        hours=_values(hour, 0, 23),
    )


ZONES = sorted(zoneinfo.available_timezones() - {"localtime", "posixrules", "Factory"})
INSTANTS = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2040, 12, 31), timezones=st.just(UTC)
)
# Zones with unusual transitions: half-hour (Lord Howe), a skipped day (Apia, 2011), midnight
# (Havana, Santiago), two hours (Troll), several a year (Casablanca), 45-minute offset (Chatham).
DST_ZONES = [
    "America/Denver",
    "Europe/London",
    "Australia/Lord_Howe",
    "Pacific/Apia",
    "America/Havana",
    "America/Santiago",
    "Antarctica/Troll",
    "Africa/Casablanca",
    "Asia/Gaza",
    "Pacific/Chatham",
    "Asia/Tehran",
]


@functools.cache
def _transitions(zone_name: str, year: int) -> list[datetime]:
    """Hours (UTC) in ``year`` right after which the zone's offset changes."""
    zone = zoneinfo.ZoneInfo(zone_name)
    hour = datetime(year, 1, 1, tzinfo=UTC)
    found = []
    offset = hour.astimezone(zone).utcoffset()
    while hour.year == year:
        following = hour + timedelta(hours=1)
        following_offset = following.astimezone(zone).utcoffset()
        if following_offset != offset:
            found.append(hour)
        hour, offset = following, following_offset
    return found


@st.composite
def zones_and_starts(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and a start instant, half of the time a few hours before one of its transitions."""
    zone_name = draw(st.one_of(st.sampled_from(ZONES), st.sampled_from(DST_ZONES)))
    if draw(st.booleans()):
        transitions = _transitions(zone_name, draw(st.integers(2000, 2040)))
        if transitions:
            moment = draw(st.sampled_from(transitions))
            return zone_name, moment + timedelta(seconds=draw(st.integers(-4 * 3600, 3600)))
    return zone_name, draw(INSTANTS)


def _first_instant_after_gap_for(fire: datetime, zone: zoneinfo.ZoneInfo, expr: Expr) -> bool:
    """True when ``fire`` is a gap's end and a wall time the expression names is in the gap."""
    minute = fire.replace(second=0)
    offset = minute.astimezone(zone).utcoffset()
    before = (minute - timedelta(seconds=1)).astimezone(zone).utcoffset()
    assert offset is not None
    assert before is not None
    if offset <= before:
        return False
    gap_end = minute.astimezone(zone).replace(tzinfo=None)
    wall = gap_end - (offset - before)
    while wall < gap_end:
        if wall.hour in expr.hours and wall.minute in expr.minutes:
            return True
        wall += timedelta(minutes=1)
    return False


@settings(max_examples=200, deadline=None)
@given(expr=expressions(), zone_and_start=zones_and_starts())
def test_fires_are_increasing_valid_and_match_the_expression(
    expr: Expr, zone_and_start: tuple[str, datetime]
) -> None:
    zone_name, after = zone_and_start
    try:
        schedule = parse_schedule(expr.text, zone_name)
    except CronError:
        # e.g. "0 0 30,31 2 *": the generator does not avoid impossible day combinations
        assume(False)
        raise
    zone = zoneinfo.ZoneInfo(zone_name)
    fires = list(itertools.islice(fires_after(schedule, after), 30))
    assert fires, "a valid schedule fires"
    assert fires[0] == next_fire(schedule, after)
    assert fires[0] > after
    for a, b in itertools.pairwise(fires):
        assert a < b
        assert next_fire(schedule, a) == b  # chaining next_fire walks the same fires
    for fire in fires:
        assert fire.tzinfo is UTC
        assert fire.microsecond == 0
        assert fire.astimezone(zone).astimezone(UTC) == fire
        local = fire.astimezone(zone)
        assert local.second in expr.seconds
        if not _first_instant_after_gap_for(fire, zone, expr):
            assert local.minute in expr.minutes, (local, expr)
            assert local.hour in expr.hours, (local, expr)


def test_the_expression_strategy_agrees_with_cronsim_on_field_values() -> None:
    from cronsim.cronsim import Field

    for text, low, high, field in [
        ("*/7", 0, 59, Field.MINUTE),
        ("5/20,1-3", 0, 59, Field.MINUTE),
        ("2-20/6", 0, 23, Field.HOUR),
        ("23", 0, 23, Field.HOUR),
        ("4-4/5", 0, 23, Field.HOUR),
        ("*/1,0-0/30", 0, 59, Field.SECOND),
    ]:
        assert _values(text, low, high) == field.parse(text)


# --- Validation -------------------------------------------------------------------------------


BAD_EXPRESSIONS = [
    # (expression, field, position, words the reason contains)
    ("61 * * * *", "minute", 0, "minute 61 is out of range 0-59"),
    ("0 25 * * *", "hour", 2, "hour 25 is out of range 0-23"),
    ("*/5 * * JAN-FOO *", "month", 8, "'FOO'"),
    ("0 0 * * MON#6", "day-of-week", 8, "1-5"),
    ("* * * *", None, 0, "expected 5 fields"),
    ("1 2 3 4 5 6 7", None, 12, "got 7"),
    ("0 0 30 2 *", "day-of-month", 4, "day-of-month 30 never occurs"),
    ("0 0 31 4,6,9,11 *", "day-of-month", 4, "never occurs"),
    ("1,2,99 * * * *", "minute", 4, "minute 99"),
    ("", None, 0, "empty"),
    (" \t ", None, 0, "empty"),
    ("0 0 */15 2 MON#5", "day-of-month", 4, "never fires"),
    ("60 0 0 * * *", "second", 0, "second 60"),
    ("0 61 0 * * *", "minute", 2, "minute 61"),
    ("  0 0 * 13 *", "month", 8, "month 13 is out of range 1-12"),
    ("0 0 L-2 * *", "day-of-month", 4, "L"),
    ("*/0 * * * *", "minute", 0, "at least 1"),
    ("*/x * * * *", "minute", 0, "whole number"),
    ("5-1 * * * *", "minute", 0, "backwards"),
    ("0 0 * * 5L,FOOL", "day-of-week", 11, "L must follow"),
    ("0 0 * * 8", "day-of-week", 8, "0-7"),
    ("0\t0 1,,2 * *", "day-of-month", 6, "empty list item"),
    ("0 0 * JANUARY *", "month", 6, "JAN-DEC"),
    ("0 0 * * MON-FOO", "day-of-week", 8, "SUN-SAT"),
    ("0 0 0 * *", "day-of-month", 4, "out of range 1-31"),
    ("1" * 5000 + " * * * *", "minute", 0, "out of range 0-59"),
]


@pytest.mark.parametrize(
    ("expression", "field", "position", "words"),
    BAD_EXPRESSIONS,
    ids=[e[0][:20] or "empty" for e in BAD_EXPRESSIONS],
)
def test_a_bad_expression_is_reported_at_its_place(
    expression: str, field: str | None, position: int, words: str
) -> None:
    with pytest.raises(CronError) as caught:
        parse_schedule(expression, "UTC")
    error = caught.value
    assert (error.field, error.position) == (field, position)
    assert words in error.reason
    assert f"position {position}" in str(error)
    assert len(str(error)) < 300
    assert isinstance(error, ValueError)


@pytest.mark.parametrize(
    ("expression", "normalized"),
    [
        ("  0  9 * * mon-fri ", "0 9 * * MON-FRI"),
        ("0 0 L * *", "0 0 L * *"),
        ("0 0 lw * *", "0 0 LW * *"),
        ("0 0 * * 5l", "0 0 * * 5L"),
        ("0 0 * * MON#2", "0 0 * * MON#2"),
        ("*/15\t0 9 * * *", "*/15 0 9 * * *"),
        ("0 0 * * 7", "0 0 * * 7"),
        ("0 0 29 2 *", "0 0 29 2 *"),
        ("0 0 * feb-dec/2 *", "0 0 * FEB-DEC/2 *"),
    ],
)
def test_a_good_expression_is_normalized(expression: str, normalized: str) -> None:
    schedule = parse_schedule(expression, "Europe/Berlin")
    assert schedule.expression == normalized
    assert schedule.timezone == "Europe/Berlin"
    assert next_fire(schedule, datetime(2026, 1, 1, tzinfo=UTC)) is not None


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Olympus",
        "",
        " ",
        "../../etc/passwd",
        "../etc",
        "America/../UTC",
        "posix/Europe/Berlin",
        "localtime",
        "local",
        "europe/berlin",
    ],
)
def test_an_unknown_zone_is_refused(zone: str) -> None:
    with pytest.raises(TimezoneError, match="Europe/Berlin"):
        parse_schedule("0 9 * * *", zone)


def test_a_miscased_zone_gets_a_suggestion() -> None:
    with pytest.raises(TimezoneError, match="did you mean 'America/Denver'"):
        parse_schedule("0 9 * * *", "america/denver")


@pytest.mark.parametrize("zone", ["UTC", "Etc/UTC", "America/Denver", "Australia/Lord_Howe"])
def test_a_known_zone_is_accepted(zone: str) -> None:
    schedule = parse_schedule("0 9 * * *", zone)
    fire = next_fire(schedule, datetime(2026, 6, 1, tzinfo=UTC))
    assert fire is not None
    assert fire.astimezone(zoneinfo.ZoneInfo(zone)).hour == 9


def test_schedules_compare_by_expression_and_zone() -> None:
    assert parse_schedule("0 9 * * mon", "UTC") == parse_schedule("0  9 * * MON", "UTC")
    assert parse_schedule("0 9 * * MON", "UTC") != parse_schedule("0 9 * * MON", "Etc/UTC")


# --- spec_hash ------------------------------------------------------------------------------


def test_spec_hash_is_stable_and_tracks_expression_and_zone() -> None:
    base = spec_hash("0 9 * * MON", "Europe/Berlin")
    assert base == spec_hash("0 9 * * MON", "Europe/Berlin")
    assert base == spec_hash(" 0  9 * * mon ", "Europe/Berlin")  # same schedule, other spelling
    assert base != spec_hash("0 10 * * MON", "Europe/Berlin")
    assert base != spec_hash("0 0 9 * * MON", "Europe/Berlin")
    assert base != spec_hash("0 9 * * MON", "Europe/London")
    assert int(base, 16) >= 0
    assert len(base) == 16
