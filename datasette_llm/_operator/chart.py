"""The Usage section's chart: one stacked bar per UTC day with usage, as SVG geometry.

``build_chart`` only computes positions and labels; the template draws them as inline SVG,
so Jinja's autoescape escapes every purpose name. Bars show spend in US dollars, or attempts
when no attempt of the 30 days has a price. A day with usage but nothing priced still gets a
thin bar, so every day with usage has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from ..usage.summary import DailyUsage, UsageSummary, usd

__all__ = ["NO_PURPOSE", "PALETTE", "Bar", "Chart", "LegendEntry", "Segment", "Tick", "build_chart"]

PALETTE: Final = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#8c6d1f")
"""Okabe and Ito's colour-blind-safe colours (their yellow darkened, black left out)."""
UNPRICED_COLOR: Final = "#999999"
NO_PURPOSE: Final = "(no purpose)"

WIDTH: Final = 720.0
HEIGHT: Final = 220.0
LEFT: Final = 64.0
RIGHT: Final = 12.0
TOP: Final = 14.0
BOTTOM: Final = 30.0
STUB: Final = 2.0
"""The height of the bar of a day whose attempts have no price (spend chart)."""


@dataclass(frozen=True, slots=True)
class Segment:
    """One purpose's part of a day's bar.

    Attributes:
        y: Its top, in SVG units.
        height: Its height.
        color: Its fill.
        label: What it shows, in words (its ``<title>``).
    """

    y: float
    height: float
    color: str
    label: str


@dataclass(frozen=True, slots=True)
class Bar:
    """One UTC day with usage.

    Attributes:
        day: The date, ``YYYY-MM-DD``.
        x: Its left edge.
        width: Its width.
        segments: One per purpose, bottom first.
        label: The day's total, in words.
    """

    day: str
    x: float
    width: float
    segments: tuple[Segment, ...]
    label: str


@dataclass(frozen=True, slots=True)
class Tick:
    """A label on an axis.

    Attributes:
        position: Its x (the date axis) or y (the value axis).
        text: What it says.
    """

    position: float
    text: str


@dataclass(frozen=True, slots=True)
class LegendEntry:
    """A purpose and its colour.

    Attributes:
        purpose: The purpose name (``"(no purpose)"`` for calls without one).
        color: Its fill.
    """

    purpose: str
    color: str


@dataclass(frozen=True, slots=True)
class Chart:
    """Everything the template needs to draw the chart.

    Attributes:
        metric: ``"spend"`` (US dollars) or ``"attempts"``.
        title: The chart's ``<title>``.
        desc: The chart's ``<desc>``: what it shows, in a sentence or two.
        bars: One per day with usage, oldest first.
        x_ticks: Dates along the bottom.
        y_ticks: Values up the side.
        legend: Each purpose's colour.
    """

    metric: Literal["spend", "attempts"]
    title: str
    desc: str
    bars: tuple[Bar, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    legend: tuple[LegendEntry, ...]
    width: float = WIDTH
    height: float = HEIGHT
    left: float = LEFT
    right: float = WIDTH - RIGHT
    top: float = TOP
    bottom: float = HEIGHT - BOTTOM


def _attempts(count: int) -> str:
    return f"{count} attempt{'s' if count != 1 else ''}"


def _amount(entry: DailyUsage, metric: str) -> str:
    if metric == "attempts":
        return _attempts(entry.attempts)
    if not entry.priced:
        return f"no price ({_attempts(entry.attempts)})"
    return f"{usd(entry.cost)} ({_attempts(entry.attempts)})"


def build_chart(summary: UsageSummary) -> Chart | None:
    """Lay out the daily usage of ``summary``; ``None`` when no day of the 30 has usage."""
    if not summary.daily or not summary.days:
        return None
    metric: Literal["spend", "attempts"] = (
        "spend" if any(entry.priced for entry in summary.daily) else "attempts"
    )
    names = sorted({entry.purpose for entry in summary.daily}, key=lambda n: (n is None, n or ""))
    colors = {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(names)}
    by_day: dict[str, list[DailyUsage]] = {}
    for entry in summary.daily:
        by_day.setdefault(entry.day, []).append(entry)

    def value(entry: DailyUsage) -> float:
        return entry.cost if metric == "spend" else float(entry.attempts)

    peak = max(sum(value(entry) for entry in entries) for entries in by_day.values())
    plot_height = HEIGHT - BOTTOM - TOP
    slot = (WIDTH - LEFT - RIGHT) / len(summary.days)
    scale = plot_height / peak if peak > 0 else 0.0
    bars = []
    for index, day in enumerate(summary.days):
        entries = sorted(by_day.get(day, ()), key=lambda e: names.index(e.purpose))
        if not entries:
            continue
        base = HEIGHT - BOTTOM
        segments = []
        for entry in entries:
            height = value(entry) * scale
            color = colors[entry.purpose]
            if height <= 0:
                height, color = STUB, UNPRICED_COLOR
            base -= height
            name = entry.purpose if entry.purpose is not None else NO_PURPOSE
            segments.append(
                Segment(base, height, color, f"{day}, {name}: {_amount(entry, metric)}")
            )
        attempts = _attempts(sum(entry.attempts for entry in entries))
        if metric == "attempts":
            shown = attempts
        elif any(entry.priced for entry in entries):
            shown = f"{usd(sum(entry.cost for entry in entries))} ({attempts})"
        else:
            shown = f"no price ({attempts})"
        bars.append(
            Bar(
                day,
                LEFT + index * slot + slot * 0.15,
                slot * 0.7,
                tuple(segments),
                f"{day}: {shown}",
            )
        )
    top_label = usd(peak) if metric == "spend" else str(int(peak))
    y_ticks = (Tick(HEIGHT - BOTTOM, "$0" if metric == "spend" else "0"), Tick(TOP, top_label))
    x_ticks = tuple(
        Tick(LEFT + index * slot + slot / 2, summary.days[index][5:])
        for index in range(0, len(summary.days), 7)
    )
    what = "spend in US dollars" if metric == "spend" else "attempts (no attempt has a price)"
    busiest = max(bars, key=lambda bar: sum(s.height for s in bar.segments))
    desc = (
        f"Stacked bars of daily {what} per purpose, one bar per UTC day with usage, from "
        f"{summary.days[0]} to {summary.days[-1]}. {len(bars)} of {len(summary.days)} days "
        f"had usage; the most was {busiest.label}."
    )
    title = f"Daily {metric} per purpose, last {len(summary.days)} days"
    return Chart(
        metric=metric,
        title=title,
        desc=desc,
        bars=tuple(bars),
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        legend=tuple(
            LegendEntry(name if name is not None else NO_PURPOSE, colors[name]) for name in names
        ),
    )
