"""Windows, freezes, cron and routing: table tests plus hypothesis properties across DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotrelease.errors import ConfigError
from hotrelease.gate.cron import parse_cron
from hotrelease.gate.policy import Policy
from hotrelease.gate.route import route_scheduled, route_urgent
from hotrelease.gate.schedule import (
    SEARCH_HORIZON,
    Freeze,
    Interval,
    Recurrence,
    Schedule,
    Window,
    parse_clock,
    parse_days,
    parse_duration,
    parse_zone,
)

UTC_ZONE = ZoneInfo("UTC")
BERLIN, NEW_YORK, SHANGHAI = (ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York"),
                              ZoneInfo("Asia/Shanghai"))


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def weekly(name: str, days: list[str], start: str, duration: str, tz: ZoneInfo) -> Window:
    return Window(name, Recurrence(tz, parse_duration(duration), days=parse_days(days),
                                   start=parse_clock(start)))


def cron_window(name: str, expr: str, duration: str, tz: ZoneInfo) -> Window:
    return Window(name, Recurrence(tz, parse_duration(duration), cron=parse_cron(expr)))


# --- small parsers -------------------------------------------------------------------------


@pytest.mark.parametrize("text,minutes", [("90m", 90), ("2h", 120), ("1h30m", 90),
                                          ("1d", 1440), ("1d2h", 1560)])
def test_parse_duration(text: str, minutes: int) -> None:
    assert parse_duration(text) == timedelta(minutes=minutes)


@pytest.mark.parametrize("text", ["", "2", "2x", "0m", "h", "-1h", "1.5h"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_days_names_and_ranges() -> None:
    assert parse_days(["mon", "wed-fri"]) == {0, 2, 3, 4}
    assert parse_days(["SUN"]) == {6}


@pytest.mark.parametrize("value", [[], ["funday"], ["fri-mon"], "mon", [1]])
def test_parse_days_refuses(value: object) -> None:
    with pytest.raises(ValueError):
        parse_days(value)


def test_parse_clock_and_zone() -> None:
    assert parse_clock("03:30") == time(3, 30)
    assert parse_clock(time(4, 0)) == time(4, 0)
    with pytest.raises(ValueError):
        parse_clock("25:00")
    assert parse_zone("Europe/Berlin").key == "Europe/Berlin"
    with pytest.raises(ValueError, match="not a known IANA"):
        parse_zone("Mars/Olympus")


# --- cron ----------------------------------------------------------------------------------


def test_cron_fields() -> None:
    c = parse_cron("*/15 2-4 * * mon-fri")
    assert c.minutes == {0, 15, 30, 45}
    assert c.hours == {2, 3, 4}
    assert c.matches_date(date(2026, 11, 23))  # Monday
    assert not c.matches_date(date(2026, 11, 22))  # Sunday


def test_cron_sunday_is_0_and_7() -> None:
    assert parse_cron("0 0 * * 7").weekdays == parse_cron("0 0 * * 0").weekdays == {0}


def test_cron_dom_or_dow_when_both_restricted() -> None:
    c = parse_cron("0 3 1 * mon")
    assert c.matches_date(date(2026, 12, 1))  # the 1st (a Tuesday)
    assert c.matches_date(date(2026, 12, 7))  # a Monday
    assert not c.matches_date(date(2026, 12, 8))
    # `*/2` in day-of-month counts as unrestricted: both must match.
    c2 = parse_cron("0 3 */2 * mon")
    assert not c2.matches_date(date(2026, 12, 3))  # odd day, Thursday
    assert c2.matches_date(date(2026, 12, 7))  # odd day 7 matches */2 (1,3,5,7), Monday


@pytest.mark.parametrize("expr,message", [
    ("0 3 * *", "expected 5 fields"), ("60 3 * * *", "outside 0-59"),
    ("0 3 * * funday", "not a number"), ("0 5-2 * * *", "runs backwards"),
    ("*/0 3 * * *", "step"), ("0 3 32 * *", "outside 1-31"),
])
def test_cron_refuses(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cron(expr)
    parse_cron("0 3 * * *")  # the twin that passes


# --- DST tables ------------------------------------------------------------------------------


def test_weekly_window_follows_local_time_across_dst() -> None:
    # Tuesday 03:00 Berlin is 01:00Z in summer time and 02:00Z in winter time.
    w = weekly("tue", ["tue"], "03:00", "2h", BERLIN).recurrence
    summer = w.intervals(utc(2026, 10, 20), utc(2026, 10, 21))
    winter = w.intervals(utc(2026, 10, 27), utc(2026, 10, 28))
    assert [iv.start for iv in summer] == [utc(2026, 10, 20, 1)]
    assert [iv.start for iv in winter] == [utc(2026, 10, 27, 2)]


def test_start_in_spring_forward_gap_moves_later() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29; it runs at 03:30 CEST (01:30Z).
    w = weekly("gap", ["sun"], "02:30", "1h", BERLIN).recurrence
    (iv,) = w.intervals(utc(2026, 3, 29), utc(2026, 3, 30))
    assert iv.start == utc(2026, 3, 29, 1, 30)
    assert iv.start.astimezone(BERLIN).strftime("%H:%M") == "03:30"
    assert iv.end - iv.start == timedelta(hours=1)


def test_start_in_fall_back_fold_uses_first_occurrence() -> None:
    # 01:30 happens twice in New York on 2026-11-01; the window opens at the first (05:30Z).
    w = weekly("fold", ["sun"], "01:30", "2h", NEW_YORK).recurrence
    (iv,) = w.intervals(utc(2026, 11, 1), utc(2026, 11, 2))
    assert iv.start == utc(2026, 11, 1, 5, 30)
    assert iv.end == utc(2026, 11, 1, 7, 30)  # two real hours, not wall-clock hours


def test_cron_window_in_shanghai_is_fixed_offset() -> None:
    w = cron_window("nightly", "0 4 * * *", "1h", SHANGHAI).recurrence
    starts = [iv.start for iv in w.intervals(utc(2026, 3, 1), utc(2026, 3, 3))]
    # 04:00 in Shanghai is always 20:00Z the day before (UTC+8, no DST).
    assert starts == [utc(2026, 3, 1, 20), utc(2026, 3, 2, 20)]


# --- next_window tables ---------------------------------------------------------------------


def test_next_window_inside_window_is_now() -> None:
    s = Schedule((weekly("tue", ["tue"], "03:00", "2h", BERLIN),))
    now = utc(2026, 11, 24, 2, 30)  # Tuesday 03:30 Berlin
    slot = s.next_window(now)
    assert slot is not None and slot.start == now and slot.end == utc(2026, 11, 24, 4)
    assert slot.window == "tue"


def test_next_window_skips_fixed_freeze() -> None:
    freeze = Freeze("holidays", fixed=Interval(utc(2026, 12, 20), utc(2027, 1, 4)))
    s = Schedule((weekly("tue", ["tue"], "03:00", "2h", BERLIN),), (freeze,))
    slot = s.next_window(utc(2026, 12, 19))
    assert slot is not None and slot.start == utc(2027, 1, 5, 2)


def test_freeze_cutting_a_window_leaves_the_rest() -> None:
    window = weekly("day", ["mon-sun"], "00:00", "1d", SHANGHAI)
    freeze = Freeze("lunch", recurrence=Recurrence(SHANGHAI, timedelta(hours=2),
                                                   days=parse_days(["mon-sun"]),
                                                   start=time(12)))
    s = Schedule((window,), (freeze,))
    slot = s.next_window(utc(2026, 11, 24, 4, 30))  # 12:30 Shanghai, frozen
    assert slot is not None and slot.start == utc(2026, 11, 24, 6)  # 14:00 local


def test_no_windows_means_no_slot() -> None:
    assert Schedule().next_window(utc(2026, 1, 1)) is None


def test_everything_frozen_means_no_slot() -> None:
    freeze = Freeze("forever", fixed=Interval(utc(2020, 1, 1), utc(2100, 1, 1)))
    s = Schedule((weekly("tue", ["tue"], "03:00", "2h", BERLIN),), (freeze,))
    assert s.next_window(utc(2026, 1, 1)) is None


def test_an_always_open_window_is_one_slot_to_the_horizon() -> None:
    """Each search chunk is 16 days: the slot must not end where a chunk does."""
    s = Schedule((weekly("always", ["mon-sun"], "00:00", "1d", UTC_ZONE),))
    now = utc(2026, 11, 24, 12)
    slot = s.next_window(now)
    assert slot is not None and slot.start == now and slot.end == now + SEARCH_HORIZON


def test_an_open_window_ends_where_a_freeze_starts_weeks_later() -> None:
    freeze = Freeze("launch", fixed=Interval(utc(2027, 1, 20), utc(2027, 2, 1)))
    s = Schedule((weekly("always", ["mon-sun"], "00:00", "1d", UTC_ZONE),), (freeze,))
    slots = s.upcoming(utc(2026, 11, 24, 12), 2)
    assert [(sl.start, sl.end) for sl in slots] == [
        (utc(2026, 11, 24, 12), utc(2027, 1, 20)),
        # searched from the end of the first slot, capped by the horizon from there
        (utc(2027, 2, 1), utc(2027, 1, 20) + SEARCH_HORIZON)]


def test_a_window_longer_than_a_search_chunk_keeps_its_end() -> None:
    s = Schedule((cron_window("monthly", "0 0 1 * *", "20d", UTC_ZONE),))
    slot = s.next_window(utc(2026, 12, 1, 6))
    assert slot is not None and slot.end == utc(2026, 12, 21)


def test_upcoming_lists_distinct_slots_in_order() -> None:
    s = Schedule((weekly("tue", ["tue", "thu"], "03:00", "2h", BERLIN),))
    slots = s.upcoming(utc(2026, 11, 24, 12), 3)
    assert [sl.start for sl in slots] == [utc(2026, 11, 26, 2), utc(2026, 12, 1, 2),
                                          utc(2026, 12, 3, 2)]


def test_yearly_cron_window_is_found() -> None:
    s = Schedule((cron_window("newyear", "0 10 2 1 *", "4h", BERLIN),))
    slot = s.next_window(utc(2026, 1, 3))
    assert slot is not None and slot.start == utc(2027, 1, 2, 9)


# --- routing --------------------------------------------------------------------------------


XMAS = Freeze("xmas", "holidays", fixed=Interval(utc(2026, 12, 20), utc(2027, 1, 4)))
NO_GLASS = Freeze("launch", "launch event", fixed=Interval(utc(2026, 12, 20), utc(2026, 12, 22)),
                  break_glass=False)
WINDOWS = (weekly("tue", ["tue"], "03:00", "2h", BERLIN),)


def test_urgent_starts_now_outside_freezes() -> None:
    r = route_urgent(Schedule(WINDOWS, (XMAS,)), utc(2026, 11, 24, 12), signed=True,
                     policy=Policy())
    assert (r.lane, r.not_before, r.break_glass, r.notify) == (
        "urgent", utc(2026, 11, 24, 12), False, True)


def test_signed_security_breaks_glass_through_a_freeze() -> None:
    now = utc(2026, 12, 24)
    r = route_urgent(Schedule(WINDOWS, (XMAS,)), now, signed=True, policy=Policy())
    assert r.break_glass and r.not_before == now
    assert "break-glass" in r.reasons[-1].message and "xmas" in r.reasons[-1].message


@pytest.mark.parametrize("signed,policy,freezes,why", [
    (False, Policy(), (XMAS,), "not signed"),
    (True, Policy(break_glass=False), (XMAS,), "policy.break_glass is false"),
    (True, Policy(), (XMAS, NO_GLASS), "does not allow break-glass"),
])
def test_urgent_held_by_freeze(signed: bool, policy: Policy, freezes: tuple[Freeze, ...],
                               why: str) -> None:
    r = route_urgent(Schedule(WINDOWS, freezes), utc(2026, 12, 21), signed=signed, policy=policy)
    assert not r.break_glass
    assert r.not_before == utc(2027, 1, 4)
    assert why in r.reasons[-1].message


def test_scheduled_waits_for_window_and_reports_freeze() -> None:
    r = route_scheduled(Schedule(WINDOWS, (XMAS,)), utc(2026, 12, 24), "class patch")
    assert r.lane == "scheduled" and r.not_before == utc(2027, 1, 5, 2)
    messages = " | ".join(x.message for x in r.reasons)
    assert "freeze xmas is active now" in messages and "'tue'" in messages


# --- properties: next_window(t) >= t, inside a window, outside every freeze -------------------

ZONES = [BERLIN, NEW_YORK, SHANGHAI]
# Instants around the 2026 DST transitions of Berlin (Mar 29, Oct 25) and New York
# (Mar 8, Nov 1), and across a whole year.
AROUND = [utc(2026, 3, 8), utc(2026, 3, 29), utc(2026, 10, 25), utc(2026, 11, 1)]


def brute_in_window(window: Window, moment: datetime) -> bool:
    """Independent check: walk back over local days and rebuild starts by hand."""
    rec = window.recurrence
    local_day = moment.astimezone(rec.tz).date()
    for back in range(0, rec.duration.days + 3):
        day = local_day - timedelta(days=back)
        if rec.cron is not None:
            clocks = rec.cron.times() if rec.cron.matches_date(day) else []
        else:
            assert rec.start is not None  # the weekly form always has a start time
            clocks = [rec.start] if day.weekday() in rec.days else []
        for clock in clocks:
            start = datetime(day.year, day.month, day.day, clock.hour, clock.minute,
                             tzinfo=rec.tz).astimezone(UTC)
            if start <= moment < start + rec.duration:
                return True
    return False


def brute_allowed(s: Schedule, moment: datetime) -> bool:
    frozen = any(brute_in_window(Window("f", f.recurrence), moment) if f.recurrence
                 else f.fixed is not None and f.fixed.contains(moment) for f in s.freezes)
    return not frozen and any(brute_in_window(w, moment) for w in s.windows)


@st.composite
def recurrences(draw: st.DrawFn, tz: ZoneInfo, max_hours: int) -> Recurrence:
    duration = timedelta(minutes=draw(st.integers(15, max_hours * 60)))
    if draw(st.booleans()):
        days = frozenset(draw(st.sets(st.integers(0, 6), min_size=1)))
        # Hours 0-3 hit the DST gaps and folds of all three zones.
        start = time(draw(st.integers(0, 23)), draw(st.sampled_from([0, 15, 30, 45])))
        return Recurrence(tz, duration, days=days, start=start)
    hour = draw(st.sampled_from(["1", "2", "3", "2-3", "*/6", "22"]))
    minute = draw(st.sampled_from(["0", "30", "15,45"]))
    dow = draw(st.sampled_from(["*", "0", "1-5", "6,0"]))
    return Recurrence(tz, duration, cron=parse_cron(f"{minute} {hour} * * {dow}"))


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    tz = draw(st.sampled_from(ZONES))
    windows = tuple(Window(f"w{i}", draw(recurrences(tz, 6)))
                    for i in range(draw(st.integers(1, 2))))
    freezes = []
    for i in range(draw(st.integers(0, 2))):
        if draw(st.booleans()):
            start = draw(st.sampled_from(AROUND)) + timedelta(hours=draw(st.integers(-48, 48)))
            freezes.append(Freeze(f"f{i}", fixed=Interval(
                start, start + timedelta(hours=draw(st.integers(1, 24 * 10))))))
        else:
            freezes.append(Freeze(f"f{i}", recurrence=draw(recurrences(tz, 30))))
    return Schedule(windows, tuple(freezes))


moments = st.builds(lambda base, minutes: base + timedelta(minutes=minutes),
                    st.sampled_from(AROUND), st.integers(-4 * 24 * 60, 4 * 24 * 60))


@settings(max_examples=150, deadline=None)
@given(schedules(), moments)
def test_next_window_properties(schedule: Schedule, moment: datetime) -> None:
    slot = schedule.next_window(moment)
    if slot is None:  # possible only if freezes cover every window in the horizon
        return
    assert slot.start >= moment
    assert slot.end > slot.start
    assert brute_allowed(schedule, slot.start), (slot, moment)
    # It is the earliest: just before it, nothing was allowed (unless it is `moment` itself).
    if slot.start > moment:
        assert not brute_allowed(schedule, slot.start - timedelta(seconds=1))
    # And the middle of the slot is allowed too, up to its end, where it really stops.
    assert brute_allowed(schedule, slot.start + (slot.end - slot.start) / 2)
    assert brute_allowed(schedule, slot.end - timedelta(seconds=1))
    if slot.end < moment + SEARCH_HORIZON:
        assert not brute_allowed(schedule, slot.end), (slot, moment)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ZONES), st.integers(0, 23), st.sampled_from([0, 30]),
       st.integers(0, 365))
def test_daily_window_local_start_is_its_wall_clock(tz: ZoneInfo, hour: int, minute: int,
                                                    day_offset: int) -> None:
    rec = Recurrence(tz, timedelta(hours=1), days=frozenset(range(7)), start=time(hour, minute))
    day = date(2026, 1, 1) + timedelta(days=day_offset)
    (start,) = list(rec.starts(day))
    local = start.astimezone(tz)
    local_offset = local.utcoffset()
    wall_offset = datetime.combine(day, time(hour, minute), tzinfo=tz).utcoffset()
    assert local_offset is not None and wall_offset is not None  # aware datetimes (ZoneInfo)
    shift = local_offset - wall_offset
    # Either the wall clock is exact, or it fell into a gap and moved later by the gap.
    assert (local.hour, local.minute) == (hour, minute) or shift > timedelta(0)


def test_urgent_held_by_a_freeze_that_never_ends() -> None:
    always = Freeze("always", recurrence=Recurrence(SHANGHAI, timedelta(days=1),
                                                    days=frozenset(range(7)), start=time(0)),
                    break_glass=False)
    s = Schedule(WINDOWS, (always,))
    assert s.unfrozen_from(utc(2026, 1, 1), horizon=timedelta(days=30)) is None
    r = route_urgent(s, utc(2026, 1, 1), signed=True, policy=Policy())
    assert r.not_before is None and "does not end" in r.reasons[-1].message
    # Twin: one day off a week lets it go.
    weekdays = Freeze("weekdays", recurrence=Recurrence(SHANGHAI, timedelta(days=1),
                                                        days=frozenset(range(6)), start=time(0)))
    assert Schedule(WINDOWS, (weekdays,)).unfrozen_from(utc(2026, 1, 1)) == \
        datetime(2026, 1, 4, tzinfo=SHANGHAI).astimezone(UTC)  # Sunday 00:00 Shanghai


def test_freeze_config_dates_and_datetimes() -> None:
    import tomllib
    from pathlib import Path

    from hotrelease.config.project import parse_config

    text = """
[plugin]
name = "greeter"
[build]
commands = ["true"]
[[freezes]]
name = "days"
start = 2026-12-20
end = 2026-12-21
timezone = "America/New_York"
[[freezes]]
name = "local-times"
start = 2026-12-20T18:00:00
end = "2026-12-21T06:00:00Z"
timezone = "Europe/Berlin"
[[freezes]]
name = "weekend"
cron = "0 18 * * fri"
duration = "2d"
timezone = "Asia/Shanghai"
"""
    cfg = parse_config(tomllib.loads(text), Path("/tmp/hotrelease.toml"))
    days, local, weekend = cfg.schedule.freezes
    # Whole days in New York (EST, UTC-5), end date inclusive.
    assert days.fixed == Interval(utc(2026, 12, 20, 5), utc(2026, 12, 22, 5))
    # A local date-time is read in the freeze's zone; an explicit offset wins.
    assert local.fixed == Interval(utc(2026, 12, 20, 17), utc(2026, 12, 21, 6))
    assert weekend.recurrence is not None and weekend.recurrence.duration == timedelta(days=2)



def test_no_windows_means_no_start_time_even_outside_freezes():
    """Scheduled releases need a window: with none configured there is no start time (the
    CLI refuses with a config error) — a freeze cannot be sidestepped by deleting windows."""
    from hotrelease.gate.route import route_scheduled

    freeze = Freeze("launch", fixed=Interval(utc(2026, 12, 20), utc(2026, 12, 22)))
    for moment in (utc(2026, 12, 20, 12), utc(2026, 12, 23, 12)):
        routing = route_scheduled(Schedule((), (freeze,)), moment, "feature")
        assert routing.lane == "scheduled" and routing.not_before is None
        assert routing.reasons[-1].rule == "window.none"
