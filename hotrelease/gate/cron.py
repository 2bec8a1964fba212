"""A small 5-field cron parser (minute hour day-of-month month day-of-week).

Only what maintenance windows need: `*`, numbers, ranges `a-b`, steps `*/n` and `a-b/n`,
lists `a,b`, and English names for months and week days. Day-of-month and day-of-week follow
classic cron: when both are restricted, a day matches if EITHER matches. Pure: it answers
"which local wall-clock times match on this date"; time zones are the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, time

from hotrelease.errors import ConfigError

_MONTHS = {n: i for i, n in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}
_DAYS = {n: i for i, n in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, low, high, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS), ("day of week", 0, 7, _DAYS))


def _number(text: str, low: int, high: int, names: dict[str, int], what: str) -> int:
    value = names.get(text.lower()) if names else None
    if value is None:
        if not text.isdigit():
            raise ConfigError(f"cron {what}: {text!r} is not a number")
        value = int(text)
    if not low <= value <= high:
        raise ConfigError(f"cron {what}: {value} is outside {low}-{high}")
    return value


def _parse_field(text: str, low: int, high: int, names: dict[str, int], what: str
                 ) -> tuple[frozenset[int], bool]:
    """Returns (allowed values, restricted?)."""
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise ConfigError(f"cron {what}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = (_number(a, low, high, names, what), _number(b, low, high, names, what))
            if start > end:
                raise ConfigError(f"cron {what}: range {base!r} runs backwards")
        else:
            start = _number(base, low, high, names, what)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    # Like classic cron, a field starting with `*` (`*`, `*/2`) counts as unrestricted for the
    # day-of-month / day-of-week OR rule.
    return frozenset(values), not text.startswith("*")


@dataclass(frozen=True)
class CronExpr:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday ... 6 = Saturday (7 folded into 0)
    days_restricted: bool
    weekdays_restricted: bool

    def matches_date(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        dom = day.day in self.days
        dow = (day.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return dom or dow
        return dom and dow

    def times(self) -> list[time]:
        """Wall-clock times of day that match, sorted."""
        return [time(h, m) for h in sorted(self.hours) for m in sorted(self.minutes)]


def parse_cron(text: str) -> CronExpr:
    """Parse `m h dom mon dow`; raises ConfigError naming the bad field."""
    if not isinstance(text, str):
        raise ConfigError("cron expression must be a string")
    parts = text.split()
    if len(parts) != 5:
        raise ConfigError(f"cron {text!r}: expected 5 fields (minute hour day-of-month month "
                          f"day-of-week), got {len(parts)}")
    parsed = [_parse_field(p, lo, hi, names, what)
              for p, (what, lo, hi, names) in zip(parts, _FIELDS, strict=True)]
    weekdays = frozenset(d % 7 for d in parsed[4][0])
    return CronExpr(text, parsed[0][0], parsed[1][0], parsed[2][0], parsed[3][0], weekdays,
                    parsed[2][1], parsed[4][1])
