"""The funnel report: from signup to offer click, computed from the event log.

Each step counts the *distinct people* with that event in the window:

    signed up -> confirmed -> received part 1 ... part N (each series)
    -> invited -> registered -> attended -> clicked the offer
    -> requested an appointment -> booked

with the conversion from the previous step and from signups.  Counting
people, not events, keeps a resend or a second registration from inflating
a step.  Series parts come from ``sent`` events whose ref is
``series:<slug>:<step key>``; the part number is looked up in
``series_deliveries`` (which records it when the step is queued), then in the
series content, then from a leading number in the key.  The appointment
stages count requests made in the window (a request by someone who is not a
subscriber counts too) and, of those, the ones marked booked.

The HTML page is self-contained: inline CSS and an inline SVG bar chart; no
scripts, fonts or images are fetched.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from funnel.db import iso
from funnel.errors import InputError
from funnel.localtime import local_to_utc
from funnel.settings import Settings

from . import appointments
from .series import list_series


@dataclass(frozen=True)
class Step:
    label: str
    count: int
    group: str  # "signup" | "series" | "webinar" | "appointment"
    short: str = ""  # the chart's label, when the full one is long

    @property
    def chart_label(self) -> str:
        return self.short or self.label


@dataclass
class Report:
    steps: list[Step]
    since: date | None = None
    until: date | None = None
    generated_at: datetime | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def signups(self) -> int:
        return self.steps[0].count if self.steps else 0

    def rows(self) -> list[tuple[Step, float | None, float | None]]:
        """(step, % of previous, % of signups); None where the base is zero or absent."""
        out = []
        previous = None
        for i, step in enumerate(self.steps):
            of_prev = None if i == 0 or not previous else 100.0 * step.count / previous
            of_signups = None if i == 0 or not self.signups else 100.0 * step.count / self.signups
            out.append((step, of_prev, of_signups))
            previous = step.count
        return out

    @property
    def period(self) -> str:
        if self.since and self.until:
            return f"{self.since} to {self.until}"
        if self.since:
            return f"since {self.since}"
        if self.until:
            return f"until {self.until}"
        return "all time"


def _day(value: str | date | None, option: str) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value.strip())
    except ValueError as exc:
        raise InputError(f"{option}: {value!r} is not a date like 2026-11-01") from exc


def _distinct(db, kind: str, lo: str, hi: str, ref_like: str | None = None) -> int:
    sql = (
        "SELECT COUNT(DISTINCT subscriber_id) FROM events WHERE kind = ? AND at >= ? AND at < ? "
        "AND subscriber_id IS NOT NULL"
    )
    params: list = [kind, lo, hi]
    if ref_like is not None:
        sql += " AND ref LIKE ?"
        params.append(ref_like)
    return db.execute(sql, params).fetchone()[0]


def _series_info(settings: Settings) -> dict[str, tuple[str, dict[str, int]]]:
    """slug -> (title, {step key: part}) from the content folder (best effort)."""
    try:
        return {
            s.slug: (s.title, {st.key: st.part for st in s.steps})
            for s in list_series(settings.content_paths)
        }
    except Exception:  # noqa: BLE001 - a broken content folder must not break the report
        return {}


_LEADING_NUMBER = re.compile(r"^(\d+)")


def compute(
    db,
    settings: Settings,
    *,
    since: str | date | None = None,
    until: str | date | None = None,
    now: datetime | None = None,
) -> Report:
    """Count each funnel step in [since, until] (whole days in the clinic's zone)."""
    first, last = _day(since, "--since"), _day(until, "--until")
    if first and last and first > last:
        raise InputError(f"--since: {first} is after --until {last}")
    tz = settings.zone
    lo = iso(local_to_utc(first, 0, tz)) if first else ""
    hi = iso(local_to_utc(last + timedelta(days=1), 0, tz)) if last else "9999"
    steps = [
        Step("Signed up", _distinct(db, "subscribed", lo, hi), "signup"),
        Step("Confirmed", _distinct(db, "confirmed", lo, hi), "signup"),
    ]

    # Series parts: distinct people per (series, part).
    known_parts = {
        (series, key): part
        for series, key, part in db.execute(
            "SELECT DISTINCT series, step_key, part FROM series_deliveries WHERE part IS NOT NULL"
        ).fetchall()
    }
    content = _series_info(settings)
    people: dict[tuple[str, int], set[int]] = {}
    notes: list[str] = []
    for sid, ref in db.execute(
        "SELECT DISTINCT subscriber_id, ref FROM events WHERE kind = 'sent' AND ref LIKE 'series:%' "
        "AND at >= ? AND at < ? AND subscriber_id IS NOT NULL",
        (lo, hi),
    ):
        _, slug, key = (ref.split(":", 2) + ["", ""])[:3]
        part = known_parts.get((slug, key)) or content.get(slug, ("", {}))[1].get(key)
        if part is None and (m := _LEADING_NUMBER.match(key)):
            part = int(m.group(1))
        if part is None:
            notes.append(f"could not tell which part {ref!r} is")
            continue
        people.setdefault((slug, part), set()).add(sid)
    for slug in sorted({s for s, _ in people}):
        title = content.get(slug, (slug, {}))[0] or slug
        top = max(p for s, p in people if s == slug)
        for part in range(1, top + 1):
            steps.append(
                Step(
                    f"{title}: part {part}",
                    len(people.get((slug, part), ())),
                    "series",
                    short=f"{slug} \u00b7 part {part}" if len(title) > 24 else "",
                )
            )

    steps += [
        Step("Invited to a webinar", _distinct(db, "invited", lo, hi), "webinar"),
        Step("Registered", _distinct(db, "registered", lo, hi), "webinar"),
        Step("Attended", _distinct(db, "attended", lo, hi), "webinar"),
        Step("Clicked the offer", _distinct(db, "clicked_offer", lo, hi), "webinar"),
    ]
    requested, booked = appointments.counts(db, lo, hi)
    steps += [
        Step("Requested an appointment", requested, "appointment"),
        Step("Booked", booked, "appointment"),
    ]
    return Report(steps, first, last, now, sorted(set(notes)))


# ----------------------------------------------------------------- output
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def render_text(report: Report) -> str:
    """A terminal table: step, people, % of previous step, % of signups."""
    header = ("STEP", "PEOPLE", "OF PREVIOUS", "OF SIGNUPS")
    rows = [header] + [
        (step.label, str(step.count), _pct(prev), _pct(total))
        for step, prev, total in report.rows()
    ]
    w0 = max(len(r[0]) for r in rows)
    widths = [max(len(r[i]) for r in rows) for i in range(1, 4)]
    lines = [f"Funnel report ({report.period})"]
    for r in rows:
        lines.append(
            r[0].ljust(w0)
            + "  "
            + "  ".join(c.rjust(w) for c, w in zip(r[1:], widths, strict=True))
        )
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)


_COLORS = {"signup": "#1d6f6b", "series": "#3b8f88", "webinar": "#c2673a", "appointment": "#7a4f9a"}


def chart_svg(report: Report) -> str:
    """The funnel as an inline SVG bar chart (the report page and the admin dashboard)."""
    bar_h, gap, label_w, chart_w = 26, 10, 300, 500
    rows = report.rows()
    height = len(rows) * (bar_h + gap) + gap
    top = max((s.count for s in report.steps), default=0) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="100%" '
        f'viewBox="0 0 {label_w + chart_w + 100} {height}" '
        'aria-label="Funnel chart: people at each step">'
    ]
    for i, (step, prev, _total) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        width = max(round(chart_w * step.count / top), 2 if step.count else 0)
        label = html.escape(step.label)
        parts.append(
            f'<text x="{label_w - 10}" y="{y + bar_h * 0.68:.0f}" text-anchor="end" '
            f'font-size="14" fill="#17323a">{html.escape(step.chart_label)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{width}" height="{bar_h}" rx="3" '
            f'fill="{_COLORS[step.group]}"><title>{label}: {step.count}</title></rect>'
            f'<text x="{label_w + width + 8}" y="{y + bar_h * 0.68:.0f}" font-size="13" '
            f'fill="#33434d">{step.count}{"" if prev is None else f" ({prev:.0f}%)"}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: Report, site_name: str = "funnel") -> str:
    """A self-contained page: the chart and the table, nothing fetched."""
    title = f"Funnel report: {html.escape(site_name)}"
    table_rows = "".join(
        f"<tr><td>{html.escape(step.label)}</td><td>{step.count}</td><td>{_pct(prev)}</td>"
        f"<td>{_pct(total)}</td></tr>"
        for step, prev, total in report.rows()
    )
    generated = (
        f" Generated {report.generated_at:%Y-%m-%d %H:%M} UTC." if report.generated_at else ""
    )
    notes = "".join(f"<p class=note>{html.escape(n)}</p>" for n in report.notes)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #17323a; background: #f6f9f8; margin: 0; padding: 24px; }}
main {{ max-width: 960px; margin: 0 auto; background: #fff; padding: 24px 28px;
        border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }}
h1 {{ font-size: 24px; margin: 0 0 4px; }}
.period {{ color: #46545e; margin: 0 0 20px; }}
table {{ border-collapse: collapse; width: 100%; margin-top: 20px; font-size: 15px; }}
th, td {{ border-bottom: 1px solid #dde7e5; padding: 6px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #eef3f2; }}
.legend span {{ display: inline-block; margin-right: 16px; font-size: 13px; }}
.legend i {{ display: inline-block; width: 12px; height: 12px; margin-right: 4px;
             vertical-align: -1px; border-radius: 2px; }}
.note {{ color: #8a4b2a; font-size: 13px; }}
</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p class="period">People at each step, {html.escape(report.period)}.{generated}</p>
<p class="legend"><span><i style="background:{_COLORS["signup"]}"></i>Signup</span>
<span><i style="background:{_COLORS["series"]}"></i>Email series</span>
<span><i style="background:{_COLORS["webinar"]}"></i>Webinar</span>
<span><i style="background:{_COLORS["appointment"]}"></i>Appointment</span></p>
{chart_svg(report)}
<table>
<thead><tr><th>Step</th><th>People</th><th>Of previous</th><th>Of signups</th></tr></thead>
<tbody>{table_rows}</tbody>
</table>
{notes}
</main>
</body>
</html>
"""


__all__ = ["Report", "Step", "chart_svg", "compute", "render_html", "render_text"]
