"""The admin door: the ``funnel`` command.

Commands here only parse options, call one domain function and format the
result.  They hold no SQL and no business rules (DESIGN.md, "Two doors, one
house").  Every FunnelError becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import click

from funnel.db import connect, utcnow
from funnel.errors import FunnelError
from funnel.settings import Settings, load_settings


@dataclass
class App:
    """What a command needs: settings, a database connection and the clock."""

    settings_override: Settings | None = None
    _settings: Settings | None = None
    _db: object | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = self.settings_override or load_settings()
        return self._settings

    @property
    def db(self):
        if self._db is None:
            self._db = connect(self.settings.db, migrate=True)
        return self._db

    def now(self) -> datetime:
        return utcnow()


def run(fn):
    """Decorator: inject the App and turn FunnelError into a one-line error."""

    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(app: App, *args, **kwargs):
        try:
            return fn(app, *args, **kwargs)
        except FunnelError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


class FunnelGroup(click.Group):
    """Lists commands in the order they were added (the order of the tour)."""

    def list_commands(self, ctx):
        return list(self.commands)


@click.group(cls=FunnelGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="funnel")
@click.pass_context
def main(ctx: click.Context) -> None:
    """funnel: a self-hosted newsletter and webinar funnel.

    Settings come from ./funnel.toml (or FUNNEL_CONFIG) and FUNNEL_* environment
    variables; see the README.

    \b
    Example:
      funnel init
      funnel subscribers add reader@example.com --name Sam --tz Europe/London
      funnel send
    """
    if ctx.obj is None:
        ctx.obj = App()


def echo_err(message: str) -> None:
    click.echo(message, err=True)


# === core: init / send (lead) ===
@main.command("init")
@run
def init_cmd(app: App) -> None:
    """Create or upgrade the database.  Safe to run again.

    \b
    Example:
      FUNNEL_DB=/var/lib/funnel/funnel.db funnel init
    """
    from funnel.db import connect, init_db

    db = connect(app.settings.db)
    applied = init_db(db)
    if applied:
        click.echo(f"{app.settings.db}: applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        click.echo(f"{app.settings.db}: schema is up to date")


@main.command("send")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Send at most this many messages.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary line.")
@run
def send_cmd(app: App, limit: int | None, quiet: bool) -> None:
    """Send every message that is due now, then exit (for cron).

    Safe to run while another `funnel send` or `funnel worker` runs: rows are
    claimed with a lease, so no message goes out twice.

    \b
    Example (crontab, every minute):
      * * * * * cd /srv/funnel && .venv/bin/funnel send -q
    """
    from campaigns.sender import send_due

    s = app.settings
    signer = _signer(s)
    total = _due_total(app)
    if quiet or total == 0:
        summary = send_due(app.db, s, app.now, limit=limit, signer=signer)
    else:
        with click.progressbar(length=min(total, limit or total), label="sending", file=sys.stderr) as bar:
            summary = send_due(app.db, s, app.now, limit=limit, signer=signer, progress=bar.update)
    click.echo(summary.line())
    for err in summary.errors[:10]:
        echo_err(err)


def _signer(settings: Settings):
    if not settings.dkim_key_file:
        return None
    from campaigns.dkim import DkimSigner

    return DkimSigner(settings.dkim_selector, settings.dkim_domain, settings.dkim_key_file)


def _due_total(app: App) -> int:
    from campaigns.outbox import due_count

    return due_count(app.db, app.now())

# === subscribers (lead) ===
@main.group("subscribers", cls=FunnelGroup)
def subscribers_group() -> None:
    """Add, import, list, export and erase subscribers.

    \b
    Example:
      funnel subscribers add sam@example.com --name "Sam Lee" --tz America/New_York
      funnel subscribers list --status active
    """


@subscribers_group.command("add")
@click.argument("email")
@click.option("--name", default="", help="Display name (first word is used as first name).")
@click.option("--tz", "timezone", default=None, help="IANA time zone, e.g. Europe/London.")
@click.option("--source", default="admin", show_default=True, help="Where this person came from.")
@run
def subscribers_add(app: App, email: str, name: str, timezone: str | None, source: str) -> None:
    """Add one person; they get a double opt-in confirmation email.

    The confirmation is queued; `funnel send` (or the worker) delivers it.

    \b
    Example:
      funnel subscribers add sam@example.com --name "Sam Lee" --tz Europe/London --source clinic-desk
    """
    from subscribers.io import add

    result = add(app.db, app.settings, email, app.now(), name=name, timezone=timezone, source=source)
    messages = {
        "created": "added as pending; a confirmation email is queued",
        "resent": "already pending; a new confirmation email is queued",
        "throttled": "already pending; a confirmation was sent in the last 24 h, so none is queued",
        "already_active": "already an active subscriber; nothing to do",
        "restarted": "was unsubscribed; a fresh opt-in confirmation is queued",
        "suppressed": "is suppressed (bounced, complained or erased); nothing was sent",
    }
    click.echo(f"{email}: {messages[result.action]}")


@subscribers_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Import the good rows and report the bad ones.")
@click.option("--pre-confirmed", is_flag=True, help="Import as active (no confirmation email). Needs --consent-note.")
@click.option("--consent-note", default="", help="How these people consented, e.g. 'paper form at the clinic, 2026'.")
@click.option("--source", default="import", show_default=True, help="Source for rows without one.")
@run
def subscribers_import(app: App, file: Path, skip_invalid: bool, pre_confirmed: bool, consent_note: str,
                       source: str) -> None:
    """Import people from a CSV with columns email, name, timezone, source.

    By default one bad row rejects the whole file and nothing is stored; every
    bad row is reported as FILE:LINE: reason.  Imported people are pending and
    get a confirmation email, unless --pre-confirmed is given with a
    --consent-note.

    \b
    Example:
      funnel subscribers import clinic-list.csv --skip-invalid
      funnel subscribers import paper-forms.csv --pre-confirmed --consent-note "signed paper form"
    """
    from subscribers.io import ImportRejected, import_csv

    try:
        report = import_csv(app.db, app.settings, file, app.now(), skip_invalid=skip_invalid,
                            pre_confirmed=pre_confirmed, consent_note=consent_note, default_source=source)
    except ImportRejected as exc:
        for problem in exc.report.problems[:50]:
            echo_err(problem)
        if len(exc.report.problems) > 50:
            echo_err(f"... and {len(exc.report.problems) - 50} more")
        raise
    for problem in report.problems[:50]:
        echo_err(problem)
    state = "active" if pre_confirmed else "pending (confirmation queued)"
    click.echo(f"{file}: imported {report.imported} as {state}, {report.already_present} already present, "
               f"{report.bad_rows} bad row(s) skipped")


@subscribers_group.command("list")
@click.option("--status", type=click.Choice(["pending", "active", "unsubscribed", "bounced", "complained", "erased"]))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@run
def subscribers_list(app: App, status: str | None, limit: int) -> None:
    """List subscribers, newest first.

    \b
    Example:
      funnel subscribers list --status pending --limit 20
    """
    from subscribers.lifecycle import listing

    rows = listing(app.db, status=status, limit=limit)
    for r in rows:
        click.echo(f"{r['id']:>6}  {r['status']:<12} {r['email'] or '(erased)':<40} {r['name']:<20} "
                   f"{r['timezone'] or '-':<20} {r['created_at'][:16]}")
    click.echo(f"{len(rows)} shown")


@subscribers_group.command("show")
@click.argument("email")
@run
def subscribers_show(app: App, email: str) -> None:
    """Show one person: state, streams and the consent ledger.

    \b
    Example:
      funnel subscribers show sam@example.com
    """
    from subscribers.io import export_records

    for rec in export_records(app.db, email):
        for key in ("email", "name", "timezone", "source", "status", "created_at", "confirmed_at"):
            click.echo(f"{key:>13}: {rec[key] if rec[key] is not None else '-'}")
        click.echo("      streams:")
        for stream, st in rec["streams"].items():
            click.echo(f"               {stream}: {st['status']}")
        click.echo("      consent:")
        for c in rec["consent"]:
            click.echo(f"               {c['at'][:19]} {c['action']:<10} {c['purpose']} via {c['source'] or '-'}"
                       f" ip={c['ip'] or '-'} text={c['consent_text_version'] or '-'}")


@subscribers_group.command("confirm")
@click.argument("token")
@run
def subscribers_confirm(app: App, token: str) -> None:
    """Confirm a subscription with the token from a confirmation link.

    Does what clicking BASE_URL/confirm/TOKEN does.

    \b
    Example:
      funnel subscribers confirm 'eyJzIjo...'
    """
    from subscribers.optin import confirm

    sub = confirm(app.db, app.settings, token.strip().rsplit("/", 1)[-1], app.now(), source="cli")
    click.echo(f"{sub.email}: confirmed, now {sub.status}")


@subscribers_group.command("unsubscribe")
@click.argument("email")
@click.option("--stream", default=None, help="Only this stream, e.g. broadcasts or series:importance-of-exercise.")
@run
def subscribers_unsubscribe(app: App, email: str, stream: str | None) -> None:
    """Unsubscribe someone from everything (or one stream); queued mail is cancelled.

    \b
    Example:
      funnel subscribers unsubscribe sam@example.com
      funnel subscribers unsubscribe sam@example.com --stream broadcasts
    """
    from subscribers.lifecycle import get_by_email, unsubscribe

    sub = get_by_email(app.db, email)
    sub = unsubscribe(app.db, sub.id, app.now(), stream=stream, source="admin")
    click.echo(f"{email}: unsubscribed from {stream or 'everything'}")


@subscribers_group.command("export")
@click.option("--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--email", default=None, help="Export one person (a GDPR access request).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File to write (default: stdout).")
@run
def subscribers_export(app: App, fmt: str, email: str | None, out: Path | None) -> None:
    """Export subscribers with their consent ledger as CSV or JSON.

    \b
    Example:
      funnel subscribers export --format json --email sam@example.com --out sam.json
      funnel subscribers export --out everyone.csv
    """
    from subscribers.io import write_export

    if out is None:
        n = write_export(app.db, click.get_text_stream("stdout"), fmt, email)
    else:
        tmp = out.with_suffix(out.suffix + ".part")
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            n = write_export(app.db, fh, fmt, email)
        tmp.replace(out)
    echo_err(f"exported {n} subscriber(s)")


@subscribers_group.command("erase")
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@run
def subscribers_erase(app: App, email: str, yes: bool) -> None:
    """Erase a person (GDPR): name, address and consent details are removed.

    Only a hash of the address remains, on the suppression list, so they are
    never mailed again.  The database is vacuumed so the address is gone from
    the file.

    \b
    Example:
      funnel subscribers erase sam@example.com --yes
    """
    from subscribers.io import erase

    if not yes:
        click.confirm(f"Erase {email} for good?", abort=True)
    sid = erase(app.db, email, app.now())
    click.echo(f"{email}: erased (subscriber {sid}); the address is suppressed")

# === content (articles) ===


@main.group(cls=FunnelGroup)
def content() -> None:
    """Articles: turn raw scraped pages into Markdown with front matter.

    \b
    Example:
      funnel content import scraped/*.txt --dry-run
      funnel content import scraped/*.txt --out content/articles
    """


@content.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    default="content/articles",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory that receives one <slug>.md per page.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be removed and kept; write nothing.")
@run
def content_import(app: App, files: tuple[str, ...], out_dir: str, dry_run: bool) -> None:
    """Clean scraped pages into DIR/<slug>.md (YAML front matter + Markdown).

    Site furniture (newsletter and appointment boxes, placeholder text, the
    next article's title) is removed by the rules in
    campaigns/cleaning_rules.toml; calls to action become front matter.
    Every file is checked before any is written, so one bad file writes
    nothing.  Preview with --dry-run first.

    \b
    Example:
      funnel content import page-1.txt page-2.txt --dry-run
      funnel content import page-1.txt page-2.txt --out content/articles
    """
    # Imported here so commands that never touch content start faster.
    from pathlib import Path

    from campaigns.articles import format_preview, import_files

    results = import_files([Path(f) for f in files], Path(out_dir), dry_run=dry_run)
    if dry_run:
        click.echo("\n\n".join(format_preview(r) for r in results))
        click.echo(f"\ndry run: {len(results)} file(s) checked, nothing written")
        return
    for r in results:
        a = r.article
        extra = f", series {a.series} part {a.part}" if a.series else ""
        if a.ctas:
            extra += ", ctas: " + ", ".join(c["kind"] for c in a.ctas)
        click.echo(f"wrote {r.out_path} ({a.words} words{extra})")


# === series ===


@main.group("series", cls=FunnelGroup)
def series_group() -> None:
    """Drip series: list them, inspect steps and timing, build one from articles.

    A series is a folder content/series/<slug>/ with series.toml and one
    Markdown file per email.

    \b
    Example:
      funnel series list
      funnel series show importance-of-exercise --timeline --tz America/New_York
    """


@series_group.command("list")
@run
def series_list(app: App) -> None:
    """List the series in the content folder.

    \b
    Example:
      funnel series list
    """
    from campaigns.series import list_series, missing_parts_text

    found = list_series(app.settings.content_path)
    if not found:
        click.echo(f"no series in {app.settings.content_path / 'series'}")
        return
    rows = [("SLUG", "TITLE", "STEPS", "CADENCE", "STREAM")]
    for s in found:
        when = s.cadence_label
        if s.send_day is not None:
            when += f" ({_WEEKDAY_NAMES[s.send_day]} {s.send_hour:02d}:00)"
        else:
            when += f" ({s.send_hour:02d}:00)"
        title = s.title + (f" [{missing_parts_text(s.gaps)}]" if s.gaps else "")
        rows.append((s.slug, title, str(len(s.steps)), when, s.stream))
    click.echo(_table(rows))


_WEEKDAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned columns; the last column is not padded."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) + "  " + r[-1]
        for r in rows
    )


@series_group.command("show")
@click.argument("slug")
@click.option("--timeline", is_flag=True, help="Show when each step would arrive.")
@click.option("--tz", "tz_name", help="Reader's IANA time zone (default: FUNNEL_TIMEZONE).")
@click.option(
    "--start",
    help='When the reader confirms, local time in --tz, e.g. "2026-11-21 10:00" (default: now).',
)
@run
def series_show(
    app: App, slug: str, timeline: bool, tz_name: str | None, start: str | None
) -> None:
    """Show a series' steps, or with --timeline when a new reader gets each one.

    The timeline is for a reader who confirms now (or at --start): step 1 right
    away (unless in quiet hours), then one step per cadence on the series'
    send day and hour in the reader's own time zone.

    \b
    Example:
      funnel series show importance-of-exercise
      funnel series show importance-of-exercise --timeline --tz Europe/London
      funnel series show importance-of-exercise --timeline --tz America/New_York \\
          --start "2026-11-21 10:00"
    """
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from campaigns.schedule import parse_local_time, step_due_times
    from campaigns.series import find_series, missing_parts_text

    series = find_series(app.settings.content_path, slug)
    click.echo(f"{series.title} ({series.slug}), {series.cadence_label}, stream {series.stream}")
    if series.gaps:
        click.echo(f"warning: {missing_parts_text(series.gaps)}", err=True)
    if not timeline:
        if tz_name or start:
            raise click.UsageError("--tz and --start only apply with --timeline")
        rows = [("#", "PART", "KEY", "OFFSET", "WORDS", "SUBJECT")]
        for number, step in enumerate(series.steps, start=1):
            days = series.cadence_days if step.offset_days is None else step.offset_days
            offset = "now" if number == 1 and step.offset_days is None else f"+{days}d"
            rows.append(
                (str(number), str(step.part), step.key, offset, str(step.words), step.subject)
            )
        click.echo(_table(rows))
        return
    tz_name = tz_name or app.settings.timezone
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise click.BadParameter(f"unknown time zone {tz_name!r}", param_hint="--tz") from exc
    anchor = parse_local_time(start, tz) if start else app.now()
    s = app.settings
    due = step_due_times(series, anchor, tz, s.quiet_start_hour, s.quiet_end_hour)
    click.echo(
        f"A reader in {tz_name} who confirms {anchor.astimezone(tz):%a %Y-%m-%d %H:%M %Z} "
        f"(quiet hours {s.quiet_start_hour:02d}:00-{s.quiet_end_hour:02d}:00) receives:"
    )
    rows = [("#", "PART", "LOCAL", "UTC", "SUBJECT")]
    for number, (step, when) in enumerate(zip(series.steps, due, strict=True), start=1):
        rows.append(
            (
                str(number),
                str(step.part),
                f"{when.astimezone(tz):%a %Y-%m-%d %H:%M %Z}",
                f"{when:%Y-%m-%d %H:%M} UTC",
                step.subject,
            )
        )
    click.echo(_table(rows))


@series_group.command("build")
@click.argument("slug")
@click.argument("articles", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="Folder that receives <slug>/ (default: the content folder's series/).",
)
@click.option("--title", help="Series title (default: the first article's title without 'part N').")
@click.option("--description", default="", help="One-sentence description.")
@click.option(
    "--cadence", default="weekly", show_default=True, help='"weekly", "daily", "every N days".'
)
@click.option("--send-day", help='Weekday to send on, e.g. "tuesday" (default: any day).')
@click.option("--send-hour", type=int, default=9, show_default=True, help="Local hour to send at.")
@click.option("--force", is_flag=True, help="Replace an existing series folder.")
@run
def series_build(
    app: App,
    slug: str,
    articles: tuple[str, ...],
    out_dir: str | None,
    title: str | None,
    description: str,
    cadence: str,
    send_day: str | None,
    send_hour: int,
    force: bool,
) -> None:
    """Assemble series SLUG from imported articles, in part order.

    Articles longer than about 1,200 words become several emails, each ending
    with a teaser for the next.  Missing parts are recorded as gaps; such a
    series can't be scheduled without --allow-gaps.

    \b
    Example:
      funnel content import scraped/*.txt --out content/articles
      funnel series build low-back-basics content/articles/*part-*.md \\
          --title "Low back basics" --send-day tuesday --send-hour 9
    """
    from pathlib import Path

    from campaigns.articles import load_article
    from campaigns.series import build_series

    loaded = [load_article(Path(a)) for a in articles]
    target = Path(out_dir) if out_dir else app.settings.content_path / "series"
    result = build_series(
        slug,
        loaded,
        target,
        title=title,
        description=description,
        cadence=cadence,
        send_day=send_day,
        send_hour=send_hour,
        force=force,
    )
    for path, parts in result.split.items():
        click.echo(f"{path}: long article split into {parts} emails")
    for step in result.series.steps:
        click.echo(f"  {step.part:>2}  {step.key}  ({step.words} words)  {step.subject}")
    click.echo(f"wrote {result.series.path} ({len(result.series.steps)} steps)")
    if result.warning:
        echo_err(f"warning: {result.warning}")


# === preview ===


@main.command("preview")
@click.argument("series_slug", required=False)
@click.argument("step_ref", required=False)
@click.option(
    "--all", "all_steps", is_flag=True, help="Every step (of SERIES, or of every series)."
)
@click.option(
    "--to",
    "out_dir",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder that receives the preview files.",
)
@run
def preview(
    app: App, series_slug: str | None, step_ref: str | None, all_steps: bool, out_dir: str
) -> None:
    """Render series emails for a sample reader into files you can open.

    STEP is a step number (1-based) or key.  For each step this writes
    <series>-<key>.html, .txt, .eml (the complete message with headers) and
    .preview.html (phone and desktop widths side by side).

    \b
    Example:
      funnel preview importance-of-exercise 1 --to out/
      funnel preview importance-of-exercise --all
      funnel preview --all --to out/
    """
    from pathlib import Path

    from campaigns.series import find_series, list_series, preview_steps, resolve_step

    content = app.settings.content_path
    if all_steps:
        if step_ref:
            raise click.UsageError("give either a STEP or --all, not both")
        chosen = [find_series(content, series_slug)] if series_slug else list_series(content)
        jobs = [(s, s.steps) for s in chosen]
    else:
        if not (series_slug and step_ref):
            raise click.UsageError("give SERIES and STEP, or --all")
        series = find_series(content, series_slug)
        jobs = [(series, [resolve_step(series, step_ref)])]
    written = 0
    for series, steps in jobs:
        for r in preview_steps(app.settings, series, steps, Path(out_dir), app.now()):
            written += len(r.files)
            click.echo(
                f"{r.series} #{r.step.part} {r.step.key}: {r.html_kb:.1f} KB HTML, "
                f"{r.words} words\n  subject:   {r.subject}\n  preheader: {r.preheader}"
            )
    click.echo(f"wrote {written} files to {out_dir}")


# === delivery: campaign / segments / series enroll+diff / worker ===

# === delivery: bounces ===

# === web: serve / up / form ===

# === webinars / report ===


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
