"""When a schedule ticks: a cron expression (five fields, or six with seconds first) or a fixed
period (`5s`, `2m`, `1h`, `1d`), in UTC.

Cron fields: `[second] minute hour day-of-month month day-of-week`, each `*`, a number, a range
`a-b`, a step `*/n` or `a-b/n`, or a comma list of those; day of week 0-7 (0 and 7 are Sunday).
As in cron, when both day fields are restricted a day matches either. A period ticks at whole
multiples of itself since the Unix epoch, so every worker computes the same ticks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_FIELDS = (  # name, low, high
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)
_SEARCH_DAYS = 366 * 5  # a cron that matches no day in five years (Feb 30) never ticks


def parse_every(text: str) -> float:
    """Seconds of a period like `5s`, `1.5m`, `2h`, `1d` (or a bare number of seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    seconds = float(match[1]) * _UNITS[match[2] or "s"] if match else 0.0
    if not seconds > 0:
        raise ValueError(
            f"schedule period {text!r} is not a positive duration; use e.g. 5s, 2m, 1h or 1d"
        )
    return seconds


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if match is None:
            raise ValueError(
                f"cron {name} field {text!r} is not '*', a number, a range a-b or a step */n"
            )
        if match[1] == "*":
            start, end = low, high
        else:
            start = int(match[2])
            end = int(match[3]) if match[3] else (high if match[4] else start)
        step = int(match[4]) if match[4] else 1
        if not (low <= start <= end <= high) or step < 1:
            raise ValueError(f"cron {name} field {text!r} is outside {low}-{high}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression; `next_after(t)` is its first tick after `t`."""

    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 Monday … 6 Sunday, as `date.weekday()`
    days_any: bool
    weekdays_any: bool

    @classmethod
    def parse(cls, text: str) -> Cron:
        """Parse five fields (minute first) or six (second first)."""
        parts = text.split()
        if len(parts) == 5:
            parts = ["0", *parts]
        if len(parts) != 6:
            raise ValueError(
                f"cron {text!r} has {len(parts)} fields; give five (minute hour day month"
                " weekday) or six (second first), e.g. '0 9 * * *' or '*/2 * * * * *'"
            )
        sets = [_field(p, *spec) for p, spec in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset((d - 1) % 7 for d in sets[5])  # cron 0/7 Sunday -> 6
        return cls(
            text,
            tuple(sorted(sets[0])),
            tuple(sorted(sets[1])),
            tuple(sorted(sets[2])),
            sets[3],
            sets[4],
            weekdays,
            parts[3] == "*",
            parts[5] == "*",
        )

    def _day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_day, by_weekday = day.day in self.days, day.weekday() in self.weekdays
        if self.days_any or self.weekdays_any:
            return by_day and by_weekday
        return by_day or by_weekday

    def next_after(self, t: float) -> float:
        """The first tick strictly after unix time `t`."""
        start = datetime.fromtimestamp(math.floor(t) + 1, UTC)
        for offset in range(_SEARCH_DAYS):
            day = start.date() + timedelta(days=offset)
            if not self._day_matches(day):
                continue
            first = offset == 0  # skip what is already past on the first day
            for hour in self.hours:
                if first and hour < start.hour:
                    continue
                for minute in self.minutes:
                    if first and hour == start.hour and minute < start.minute:
                        continue
                    for second in self.seconds:
                        tick = datetime(day.year, day.month, day.day, hour, minute, second, 0, UTC)
                        if tick >= start:
                            return tick.timestamp()
        raise ValueError(f"cron {self.text!r} never ticks (no matching day in five years)")


@dataclass(frozen=True, slots=True)
class Every:
    """A fixed period, ticking at whole multiples of it since the epoch."""

    seconds: float

    def next_after(self, t: float) -> float:
        """The first tick strictly after unix time `t`."""
        tick = math.ceil(t / self.seconds) * self.seconds
        return tick if tick > t else tick + self.seconds


Ticks = Cron | Every


def ticks(cron: str | None, every: float | None) -> Ticks:
    """The ticks of a schedule given one of a cron expression or a period in seconds."""
    if cron is not None and every is None:
        return Cron.parse(cron)
    if every is not None and cron is None:
        return Every(every)
    raise ValueError("a schedule needs exactly one of a cron expression or a period (every)")
