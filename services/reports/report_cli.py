"""``herald report CAMPAIGN``: a campaign's report in the terminal (rich), optionally as a PNG.

The numbers are the ones ``GET /v1/campaigns/{id}/report`` answers (campaign_report.load);
this module only draws them. The PNG uses matplotlib's Agg backend (no display needed),
installed with ``pip install 'herald[charts]'``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

ROWS = (
    ("targeted", "targeted"), ("skipped_total", "skipped"), ("pending", "pending"), ("held", "  of which held"),
    ("sent", "sent"), ("delivered", "delivered"),
    ("undelivered", "undelivered"), ("failed", "failed"), ("unknown", "unknown (not resent)"), ("delivery_rate", "delivery rate"),
    ("clicks_unique", "clicks (unique)"), ("clicks_total", "clicks (total)"), ("bot_clicks", "bot clicks"),
    ("click_rate", "click rate"), ("conversions", "conversions"), ("conversion_rate", "conversion rate"),
    ("revenue", "revenue"), ("segments", "segments"),
)
RATES = (("delivery_rate", "delivery", "green"), ("click_rate", "click", "cyan"), ("conversion_rate", "conversion", "magenta"))
BAR_WIDTH = 40


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("_rate"):
        return f"{value * 100:.2f}%"
    if key == "revenue":
        return ", ".join(f"{amount} {currency}" for currency, amount in value.items()) or "0"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _bar(rate: float | None, scale: float, colour: str) -> Text:
    width = 0 if not rate or not scale else max(1, round(BAR_WIDTH * rate / scale))
    return Text("█" * width, style=colour) + Text(f" {_cell('x_rate', rate)}")


def _when(value: str | None) -> str:
    if not value:
        return "?"
    try:
        return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return value


def held_line(h: dict[str, Any]) -> str:
    """``quiet_hours 2 until 2026-12-07 08:00 UTC`` (with the first release when it differs)."""
    line = f"{h['rule']} {h['count']:,} until {_when(h.get('until'))}"
    if h.get("next_release") and h.get("next_release") != h.get("until"):
        line += f" (first at {_when(h['next_release'])})"
    return line


NO_DATA = "no data yet: nothing sent or delivered"


def has_rates(report: dict[str, Any]) -> bool:
    """Whether any variant has a rate to draw (something sent)."""
    return any(c.get(key) is not None for c in report["variants"] for key, _, _ in RATES)


def verdict(ab: dict[str, Any]) -> str:
    """One line on the A/B comparison: a winner only for a configured test with a significant result."""
    if ab.get("reason") == "no_data" or ab.get("leader", ab.get("winner")) is None:
        return f"{NO_DATA}: no winner"
    leader = ab.get("leader", ab.get("winner"))
    if ab.get("configured", True) is False:
        quality = "significant" if ab.get("significant") else f"not significant, {ab.get('reason')}"
        return f"no A/B test on this campaign: no winner; {leader} leads ({quality})"
    if ab.get("winner"):
        return f"winner {ab['winner']} (significant)"
    return f"no significant winner ({ab.get('reason')}); {leader} leads so far"


def render(report: dict[str, Any]) -> Group:
    columns = [*report["variants"], {"variant": "total", **report["totals"]}]
    table = Table(title=f"{report['name']}  ({report['state']}, phase {report.get('phase') or '-'})", show_lines=False)
    table.add_column("")
    for c in columns:
        table.add_column(str(c["variant"]), justify="right", style="bold" if c["variant"] == "total" else None)
    for key, label in ROWS:
        table.add_row(label, *(_cell(key, c.get(key)) for c in columns))
    skipped = report["totals"]["skipped"]
    parts: list[Any] = [table]
    if skipped:
        parts.append(Text("skipped by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(skipped.items()))))
    held = report["totals"].get("held_by") or []
    if held:
        parts.append(Text("held (scheduled) by rule: " + "; ".join(held_line(h) for h in held)))
    chart = Table.grid(padding=(0, 1))
    chart.add_column(justify="right")
    chart.add_column()
    if has_rates(report):
        for key, label, colour in RATES:
            scale = max((c.get(key) or 0) for c in report["variants"]) if report["variants"] else 0
            for c in report["variants"]:
                chart.add_row(f"{label} {c['variant']}", _bar(c.get(key), scale, colour))
        parts.append(Panel(chart, title="rates by variant (bars scaled to the best)", expand=False))
    else:
        parts.append(Panel(Text(NO_DATA), title="rates by variant", expand=False))
    ab = report.get("ab_test")
    if ab:
        lines = [f"metric {ab['metric']}, alpha {ab['alpha']}, min sample {ab['min_sample']}"]
        for s in ab.get("variants", []):
            lines.append(f"  {s['name']}: {s['successes']:,} / {s['trials']:,} = {s['rate'] * 100:.2f}%")
        for t in ab.get("comparisons", []):
            lines.append(f"  {t['a']} vs {t['b']}: z = {t['z']:.3f}, p = {t['p_value']:.4f}")
        lines.append(verdict(ab))
        if ab.get("decided"):
            lines.append(f"decided: {ab['decided']['winner']}")
        title = ("A/B test (two-proportion z-test)" if ab.get("configured", True)
                 else "variants compared (no A/B test; two-proportion z-test)")
        parts.append(Panel("\n".join(lines), title=title, expand=False))
    return Group(*parts)


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render(report))


def write_png(report: dict[str, Any], path: str | Path) -> Path:
    """Counts and rates per variant, two panels, written with matplotlib's Agg backend."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # an optional extra
        raise SystemExit("--png needs matplotlib: pip install 'herald[charts]'") from exc
    variants = [c["variant"] for c in report["variants"]] or ["-"]
    data = report["variants"] or [report["totals"]]
    fig, (counts_ax, rates_ax) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    width = 0.8 / 4
    for i, (key, label) in enumerate((("sent", "sent"), ("delivered", "delivered"), ("clicks_unique", "clicked"),
                                      ("conversions", "converted"))):
        xs = [j + (i - 1.5) * width for j in range(len(variants))]
        counts_ax.bar(xs, [c.get(key) or 0 for c in data], width, label=label)
    counts_ax.set_xticks(range(len(variants)), variants)
    counts_ax.set_title("messages per variant")
    counts_ax.legend()
    width = 0.8 / 3
    for i, (key, label, _) in enumerate(RATES):
        xs = [j + (i - 1) * width for j in range(len(variants))]
        rates_ax.bar(xs, [(c.get(key) or 0) * 100 for c in data], width, label=f"{label} rate")
    rates_ax.set_xticks(range(len(variants)), variants)
    rates_ax.set_ylabel("%")
    ab = report.get("ab_test")
    title = "rates per variant"
    if ab and ab.get("comparisons"):
        best = ab["comparisons"][0]
        title += f"\n{ab['metric']}: {best['a']} vs {best['b']}, p = {best['p_value']:.4f}"
        title += " (significant)" if ab.get("significant") else " (not significant)"
    if not any(c.get(key) for c in data for key in ("sent", "delivered", "clicks_unique", "conversions")):
        for ax in (counts_ax, rates_ax):
            ax.text(0.5, 0.5, "no data yet", ha="center", va="center", fontsize=14, transform=ax.transAxes)
    if not has_rates(report):
        title = "rates per variant"
    rates_ax.set_title(title)
    rates_ax.legend()
    fig.suptitle(f"{report['name']} ({report['state']})")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
