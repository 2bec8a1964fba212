"""Maintenance windows and freezes: when a scheduled release may run.

Pure: windows, freezes and an explicit `now` go in; the next usable slot (or the end of a
freeze) comes out. No clock reads, no I/O. `gate.route` puts a release on a lane with it;
`config.project` builds the `Schedule` from `[[windows]]` and `[[freezes]]`. Imports only
`gate.cron`.

Time model: windows and recurring freezes are wall-clock rules in an IANA zone. Each
occurrence's local start is converted to UTC with `zoneinfo` (a start inside a spring-forward
gap lands at the same offset as before the gap, i.e. shifted later by the gap; an ambiguous
fall-back start uses its first occurrence), and the duration is then added as real elapsed
time. All intervals are half-open [start, end) in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from hotrelease.gate.cron import CronExpr

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SEARCH_CHUNK = timedelta(days=16)
SEARCH_HORIZON = timedelta(days=800)  # > 2 years: a yearly cron window is always found
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


# --- small parsers used by the config loader ---------------------------------------------


def parse_duration(text: Any) -> timedelta:
    """`90m`, `2h`, `1h30m`, `3d`: positive, whole minutes."""
    if not isinstance(text, str) or not text or not (m := _DURATION_RE.match(text.strip())):
        raise ValueError(f"{text!r} is not a duration like 90m, 2h, 1h30m or 3d")
    days, hours, minutes = (int(g or 0) for g in m.groups())
    value = timedelta(days=days, hours=hours, minutes=minutes)
    if value <= timedelta(0):
        raise ValueError("duration must be positive")
    return value


def parse_zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise ValueError("expected an IANA time zone name like Europe/Berlin")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{name!r} is not a known IANA time zone") from None


def parse_days(items: Any) -> frozenset[int]:
    """`["mon", "wed-fri"]` -> {0, 2, 3, 4} (Monday = 0, as `date.weekday()`)."""
    if not isinstance(items, list) or not items:
        raise ValueError("expected a non-empty array of week days like [\"tue\", \"thu\"]")
    out: set[int] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{item!r} is not a week day name")
        first, _, last = item.lower().partition("-")
        if first not in WEEKDAYS or (last and last not in WEEKDAYS):
            raise ValueError(f"{item!r} is not a week day (mon..sun) or range like mon-fri")
        a, b = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        if b < a:
            raise ValueError(f"day range {item!r} runs backwards")
        out.update(range(a, b + 1))
    return frozenset(out)


def parse_clock(value: Any) -> time:
    """`"03:00"` or a TOML local time `03:00:00`."""
    if isinstance(value, time):
        return value.replace(tzinfo=None)
    if isinstance(value, str):
        try:
            parsed = time.fromisoformat(value)
            if parsed.tzinfo is None:
                return parsed
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not a wall-clock time like \"03:00\"")


# --- intervals -----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Interval:
    start: datetime
    end: datetime

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for iv in sorted(intervals):
        if out and iv.start <= out[-1].end:
            if iv.end > out[-1].end:
                out[-1] = Interval(out[-1].start, iv.end)
        else:
            out.append(iv)
    return out


def subtract(base: list[Interval], holes: list[Interval]) -> list[Interval]:
    """`base` minus `holes`; both merged and sorted."""
    out: list[Interval] = []
    for iv in base:
        start = iv.start
        for hole in holes:
            if hole.end <= start or hole.start >= iv.end:
                continue
            if hole.start > start:
                out.append(Interval(start, hole.start))
            start = max(start, hole.end)
        if start < iv.end:
            out.append(Interval(start, iv.end))
    return out


# --- recurrences ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Recurrence:
    """Occurrences starting at local wall-clock times in `tz`, each lasting `duration`."""

    tz: ZoneInfo
    duration: timedelta
    days: frozenset[int] = frozenset()  # weekly form: Monday = 0
    start: time | None = None
    cron: CronExpr | None = None

    def _local_starts(self, day: date) -> list[time]:
        if self.cron is not None:
            return self.cron.times() if self.cron.matches_date(day) else []
        return [self.start] if self.start is not None and day.weekday() in self.days else []

    def starts(self, day: date) -> Iterator[datetime]:
        for clock in self._local_starts(day):
            yield datetime.combine(day, clock, tzinfo=self.tz).astimezone(UTC)

    def intervals(self, lo: datetime, hi: datetime) -> list[Interval]:
        """Occurrences overlapping [lo, hi)."""
        first = (lo - self.duration).astimezone(self.tz).date() - timedelta(days=1)
        last = hi.astimezone(self.tz).date() + timedelta(days=1)
        out = []
        day = first
        while day <= last:
            for start in self.starts(day):
                end = start + self.duration
                if start < hi and end > lo:
                    out.append(Interval(start, end))
            day += timedelta(days=1)
        return out

    def describe(self) -> dict[str, Any]:
        rule: dict[str, Any] = ({"cron": self.cron.text} if self.cron is not None else
                                {"days": [WEEKDAYS[d] for d in sorted(self.days)],
                                 "start": self.start.strftime("%H:%M") if self.start else None})
        return {**rule, "duration_minutes": int(self.duration.total_seconds() // 60),
                "timezone": self.tz.key}


@dataclass(frozen=True)
class Window:
    name: str
    recurrence: Recurrence

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.recurrence.describe()}


@dataclass(frozen=True)
class Freeze:
    """A fixed UTC range, or a recurrence; blocks the scheduled lane."""

    name: str
    reason: str = ""
    fixed: Interval | None = None
    recurrence: Recurrence | None = None
    break_glass: bool = True  # may a signed security label pierce it?

    def intervals(self, lo: datetime, hi: datetime) -> list[Interval]:
        if self.fixed is not None:
            return [self.fixed] if self.fixed.start < hi and self.fixed.end > lo else []
        return self.recurrence.intervals(lo, hi) if self.recurrence is not None else []

    def to_dict(self) -> dict[str, Any]:
        rule = ({"start": self.fixed.start.isoformat(), "end": self.fixed.end.isoformat()}
                if self.fixed is not None else
                self.recurrence.describe() if self.recurrence is not None else {})
        return {"name": self.name, "reason": self.reason, "break_glass": self.break_glass,
                **rule}


@dataclass(frozen=True)
class Slot:
    """A stretch of time when scheduled releases may run."""

    start: datetime
    end: datetime
    window: str


@dataclass(frozen=True)
class Schedule:
    windows: tuple[Window, ...] = ()
    freezes: tuple[Freeze, ...] = ()

    @property
    def longest(self) -> timedelta:
        durations = [w.recurrence.duration for w in self.windows]
        durations += [f.recurrence.duration for f in self.freezes if f.recurrence is not None]
        return max(durations, default=timedelta(0))

    def frozen(self, lo: datetime, hi: datetime) -> list[Interval]:
        return merge(iv for f in self.freezes for iv in f.intervals(lo, hi))

    def freezes_at(self, moment: datetime) -> list[Freeze]:
        tick = moment + timedelta(microseconds=1)
        return [f for f in self.freezes if any(iv.contains(moment)
                                                for iv in f.intervals(moment, tick))]

    def window_at(self, moment: datetime) -> str | None:
        tick = moment + timedelta(microseconds=1)
        for window in self.windows:
            if any(iv.contains(moment) for iv in window.recurrence.intervals(moment, tick)):
                return window.name
        return None

    def allowed(self, lo: datetime, hi: datetime) -> list[Interval]:
        """Window time minus freeze time overlapping [lo, hi) (not clipped to it)."""
        pad = self.longest
        opened = merge(iv for w in self.windows for iv in w.recurrence.intervals(lo, hi))
        return subtract(opened, self.frozen(lo - pad, hi + 2 * pad))

    def next_window(self, moment: datetime, horizon: timedelta = SEARCH_HORIZON
                    ) -> Slot | None:
        """The earliest slot a scheduled release may use at or after `moment`, or None.

        The answer's start is >= moment, inside a window and outside every freeze.
        """
        if not self.windows:
            return None
        lo = moment
        while lo - moment < horizon:
            hi = lo + SEARCH_CHUNK
            for iv in self.allowed(lo, hi):
                if iv.end > moment and iv.start < hi:
                    start = max(iv.start, moment)
                    end = self._open_until(iv.end, moment + horizon)
                    return Slot(start, end, self.window_at(start) or "?")
            lo = hi
        return None

    def _open_until(self, end: datetime, limit: datetime) -> datetime:
        """Where allowed time that is open at `end` really stops: one search chunk sees only
        the occurrences near it, so a long or always-open window (or back-to-back ones)
        goes on in the next chunk. Capped at `limit` (the search horizon)."""
        while end < limit:
            going_on = [iv.end for iv in self.allowed(end, end + SEARCH_CHUNK)
                        if iv.start <= end < iv.end]
            if not going_on:
                break
            end = max(going_on)
        return min(end, limit)

    def upcoming(self, moment: datetime, count: int) -> list[Slot]:
        slots: list[Slot] = []
        while len(slots) < count:
            slot = self.next_window(moment)
            if slot is None:
                break
            slots.append(slot)
            moment = slot.end
        return slots

    def unfrozen_from(self, moment: datetime, horizon: timedelta = SEARCH_HORIZON
                      ) -> datetime | None:
        """The first instant >= moment outside every freeze; None if freezes chain on for
        longer than the search horizon (e.g. a recurring freeze that never lets go)."""
        start = moment
        while moment - start < horizon:
            blocking = [iv for iv in self.frozen(moment, moment + timedelta(microseconds=1))
                        if iv.contains(moment)]
            if not blocking:
                return moment
            moment = max(iv.end for iv in blocking)
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"windows": [w.to_dict() for w in self.windows],
                "freezes": [f.to_dict() for f in self.freezes]}
