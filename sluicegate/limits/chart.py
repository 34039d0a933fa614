"""The daily cost per consumer as a PNG (`sluicegate report --chart`), drawn by matplotlib from a usage report.

matplotlib is the optional extra `report`: it is imported when a chart is drawn, never before,
and draws on its Agg canvas (no display, and no pyplot state shared with other callers).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

#: consumers drawn one by one; the others are summed into one series
MAX_SERIES = 10
INSTALL_HINT = "pip install 'sluicegate[report]'"


class ChartUnavailable(Exception):
    """matplotlib is not installed."""


def daily_cost_by_consumer(report: Mapping[str, Any]) -> dict[str, list[int]]:
    """Each consumer's cost per day of the report (micro-units, one value per day), the largest
    spenders first; past `MAX_SERIES`, the rest are summed as `others`."""
    days = [d["day"] for d in report["days"]]
    where = {day: i for i, day in enumerate(days)}
    series: dict[str, list[int]] = {}
    for row in report["rows"]:
        series.setdefault(row["consumer"], [0] * len(days))[where[row["day"]]] += row["cost_micro"]
    ranked = sorted(series, key=lambda name: (-sum(series[name]), name))
    out = {name: series[name] for name in ranked[:MAX_SERIES]}
    if len(ranked) > MAX_SERIES:
        out["others"] = [sum(series[name][i] for name in ranked[MAX_SERIES:]) for i in range(len(days))]
    return out


def require_matplotlib() -> None:
    """Raise `ChartUnavailable`, naming the extra to install, where matplotlib cannot be imported."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
    except ImportError as exc:
        raise ChartUnavailable(f"drawing a chart needs matplotlib: {INSTALL_HINT}") from exc


def draw_daily_cost(report: Mapping[str, Any], path: str | Path | IO[bytes]) -> None:
    """Write a PNG of the daily cost per consumer (stacked bars, one per day) to `path` (a file name or object)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    days = [d["day"] for d in report["days"]]
    series = daily_cost_by_consumer(report)
    figure = Figure(figsize=(min(24.0, max(8.0, 0.35 * len(days) + 3)), 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(days)))
    bottom = [0.0] * len(days)
    for name, costs in series.items():
        values = [micro / 1_000_000 for micro in costs]
        axes.bar(positions, values, bottom=bottom, label=_label(name), width=0.8)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    step = max(1, len(days) // 20)
    axes.set_xticks(positions[::step], [day[5:] if len(days) > 1 else day for day in days[::step]], rotation=45)
    axes.set_xlim(-0.6, len(days) - 0.4)
    axes.set_ylim(0, max(bottom, default=0) * 1.08 or 1)
    axes.set_ylabel(f"cost ({report['currency']})")
    axes.set_xlabel(f"day ({report['timezone']})")
    axes.set_title(f"Daily cost per consumer, {days[0]} to {days[-1]}" if days else "Daily cost per consumer")
    axes.grid(axis="y", alpha=0.3)
    if series:
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="consumer")
    else:
        axes.text(0.5, 0.5, "no usage in this period", transform=axes.transAxes, ha="center", va="center")
    figure.savefig(path, format="png", dpi=100)


def _label(name: str) -> str:
    """A consumer's name as a legend label: `$` is not math, a leading `_` does not hide it."""
    label = name.replace("$", r"\$")
    return " " + label if label.startswith("_") else label
