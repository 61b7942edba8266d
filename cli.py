"""The admin door: the ``funnel`` command.

Commands here only parse options, call one domain function and format the
result.  They hold no SQL and no business rules (DESIGN.md, "Two doors, one
house").  Every FunnelError becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import click

from campaigns import appointments, broadcasts, enrollment, events, feeds
from campaigns.articles import Filters, format_preview, load_article
from campaigns.attendance import import_attendance
from campaigns.check import problems
from campaigns.check import warnings as check_warnings
from campaigns.enrollment import held_steps
from campaigns.importer import import_paths
from campaigns.preview import preview_campaign, preview_steps
from campaigns.report import compute, render_html, render_text
from campaigns.schedule import WHEN_FORMS as WHEN_HELP
from campaigns.schedule import parse_when, step_due_times
from campaigns.sender import send_due, signer_for
from campaigns.series import (
    build_series,
    find_series,
    list_series,
    missing_parts_text,
    resolve_step,
)
from campaigns.webinars import (
    cancel_webinar,
    create_from_file,
    create_webinar,
    edit_webinar,
    export_registrants,
    get_webinar,
    invite,
    list_webinars,
    load_files,
    outbox_counts,
    register,
    registrants,
    registration_counts,
    split_segment,
    webinar_files,
)
from campaigns.worker import tick, tick_line
from funnel import clock
from funnel.db import connect, explain_failure, init_db, parse_iso
from funnel.errors import FunnelError, RowsRejected
from funnel.outbox import due_count
from funnel.settings import Settings, config_path, load_settings, redact, write_dev_config
from funnel.validate import zone_name
from subscribers import admins, bounces, history, lifecycle, segments
from subscribers.bounces import process_paths
from subscribers.io import add, erase, export_records, import_csv, write_export
from subscribers.optin import confirm

# Late imports, measured: the web door (web.pages, web.serve) brings flask and
# waitress, which every other `funnel` command would pay at start-up:
# `funnel --help` takes 0.57 s of CPU with the imports above and 0.77 s with
# the web door imported here too (/usr/bin/time, user+sys, best of 4).  So
# only serve, up, worker and form snippet import it, inside the command.


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
        """The injected clock (funnel.clock): every command takes "now" from here."""
        return clock.now()

    def check_settings(self) -> Settings:
        """Settings for `init`, `check` and the preflight: a missing secret key is
        not an error here (`funnel check` reports it among the other problems)."""
        if self.settings_override or self._settings:
            return self.settings_override or self._settings
        return load_settings(require_secret=False)


def run(fn):
    """Decorator: inject the App and turn FunnelError into a one-line error."""

    @click.pass_obj
    @functools.wraps(fn)
    def wrapper(app: App, *args, **kwargs):
        try:
            return fn(app, *args, **kwargs)
        except FunnelError as exc:
            raise click.ClickException(redact(str(exc))) from exc

    return wrapper


def preflight(fn):
    """Decorator (under @run): outside dev mode, refuse to start when `funnel check`
    finds a problem, printing the same lines.  Dev mode (FUNNEL_DEV=1) never blocks."""

    @functools.wraps(fn)
    def wrapper(app: App, *args, **kwargs):
        s = app.check_settings()
        if not s.dev:
            found = problems(s, app.now(), network=True)
            if len(found) == 1:  # one problem: one line
                raise click.ClickException(redact(f"{found[0]}; nothing was sent or queued"))
            for line in found:
                echo_err(line)
            if found:
                raise click.ClickException(
                    f"{len(found)} problem(s) above (see `funnel check`); nothing was sent or queued"
                )
        return fn(app, *args, **kwargs)

    return wrapper


class FunnelGroup(click.Group):
    """Lists commands in the order they were added (the order of the tour).

    Every failure ends as one line on stderr and exit status 1, never a
    traceback: FunnelError as it is, and failures of the machine (disk full,
    read-only database or file system, text that is not UTF-8) as the sentence
    funnel.db.explain_failure gives them.
    """

    def list_commands(self, ctx):
        return list(self.commands)

    def parse_args(self, ctx, args):
        for position, arg in enumerate(args, 1):
            if _not_utf8(arg) and not Path(arg).exists():  # a real file's name may be any bytes
                shown = arg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                raise click.ClickException(f"argument {position} is not valid UTF-8: {shown}")
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.exceptions.ClickException:
            raise
        except (FunnelError, sqlite3.Error, OSError, UnicodeError) as exc:
            app = ctx.obj
            path = app.settings.db if isinstance(app, App) and app._settings else "the database"
            problem = explain_failure(exc, path)
            if problem is None:
                raise
            raise click.ClickException(redact(str(problem))) from exc


def _not_utf8(arg: str) -> bool:
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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
    click.echo(redact(message), err=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass


@contextlib.contextmanager
def progress(length: int, label: str):
    """A progress bar on a terminal; nothing when stderr is a file or a pipe (cron)."""
    if not sys.stderr.isatty():
        yield _NoBar()
        return
    with click.progressbar(length=length, label=label, file=sys.stderr) as bar:
        yield bar


# === core: init / send (lead) ===
@main.command("init")
@click.option("--dev", is_flag=True,
              help="First write a dev-mode funnel.toml here (dev = true, ./funnel.db) unless "
                   "one exists; `make up` runs this.")
@run
def init_cmd(app: App, dev: bool) -> None:
    """Create or upgrade the database.  Safe to run again.  Needs no secret key.

    \b
    Example:
      FUNNEL_DB=/var/lib/funnel/funnel.db funnel init
      funnel init --dev        # try funnel on this machine
    """
    if dev:
        path = config_path()
        if write_dev_config(path, Path.cwd() / "funnel.db"):
            click.echo(f"wrote {path} (dev mode: dev inbox, public dev key; not for production)")
        else:
            click.echo(f"{path} exists; left unchanged")
    settings = app.settings_override or load_settings(require_secret=False)
    db = connect(settings.db)
    applied = init_db(db)
    if applied:
        click.echo(f"{settings.db}: applied {len(applied)} migration(s): {', '.join(applied)}")
    else:
        click.echo(f"{settings.db}: schema is up to date")


@main.command("check")
@click.option("--no-network", is_flag=True, help="Do not connect to the SMTP relays.")
@run
def check_cmd(app: App, no_network: bool) -> None:
    """List every problem in the configuration and content; exit 1 if there is any.

    One line per problem, naming the setting or file: placeholder sender,
    postal address, base URL or webinar join URL; a loopback or plain-http
    base URL outside dev mode; a CTA with no URL; a bundled webinar in the
    past; no secret key; an unwritable database; a relay refusing connections;
    messages held by a configuration error.  `send`, `worker`, `serve`, `up`
    and every command that queues mail run the same checks first (outside
    dev mode) and refuse to start.

    \b
    Example:
      funnel check
      funnel check --no-network
    """
    found = problems(app.check_settings(), app.now(), network=not no_network)
    for line in found:
        click.echo(line)
    for line in check_warnings(app.check_settings(), app.now()):
        echo_err(f"warning: {line}")  # needs attention, but does not stop sending
    if found:
        echo_err(f"{len(found)} problem(s) found")
        raise click.exceptions.Exit(1)
    click.echo("no problems found")


@main.command("send")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Send at most this many messages.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the summary line.")
@run
@preflight
def send_cmd(app: App, limit: int | None, quiet: bool) -> None:
    """Send every message that is due now, then exit (for cron).

    Safe to run while another `funnel send` or `funnel worker` runs: rows are
    claimed with a lease, so no message goes out twice.

    \b
    Example (crontab, every minute):
      * * * * * cd /srv/funnel && .venv/bin/funnel send -q
    """
    s = app.settings
    ticked = tick(app.db, s, app.now())  # queue due series steps and broadcasts first
    if not quiet and tick_line(ticked):
        echo_err(tick_line(ticked))
    for problem in ticked["problems"]:
        echo_err(f"warning: {problem}")
    signer = signer_for(s)  # a key problem is reported here, before anything is sent
    total = _due_total(app)
    try:
        if quiet or total == 0:
            summary = send_due(app.db, s, app.now, limit=limit, signer=signer)
        else:
            with progress(min(total, limit or total), "sending") as bar:
                summary = send_due(app.db, s, app.now, limit=limit, signer=signer,
                                   progress=bar.update)  # fmt: skip
    finally:
        if signer is not None:
            signer.close()  # its signing child process, if a large batch started one
    click.echo(summary.line())
    for err in summary.errors[:10]:
        echo_err(err)


def _due_total(app: App) -> int:
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
@preflight
def subscribers_add(app: App, email: str, name: str, timezone: str | None, source: str) -> None:
    """Add one person; they get a double opt-in confirmation email.

    The confirmation is queued; `funnel send` (or the worker) delivers it.

    \b
    Example:
      funnel subscribers add sam@example.com --name "Sam Lee" --tz Europe/London --source clinic-desk
    """
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
@preflight
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
    try:
        report = import_csv(app.db, app.settings, file, app.now(), skip_invalid=skip_invalid,
                            pre_confirmed=pre_confirmed, consent_note=consent_note, default_source=source)
    except RowsRejected as exc:
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
    rows = lifecycle.listing(app.db, status=status, limit=limit)
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
    sub = lifecycle.get_by_email(app.db, email)
    sub = lifecycle.unsubscribe(app.db, sub.id, app.now(), stream=stream, source="admin")
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
    if out is None:
        n = write_export(app.db, sys.stdout, fmt, email)
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
    never mailed again.  Their appointment requests are deleted too (also
    for someone who only ever asked for an appointment).  The database is vacuumed so the address is gone from
    the file.

    \b
    Example:
      funnel subscribers erase sam@example.com --yes
    """
    if not yes:
        click.confirm(f"Erase {email} for good?", abort=True)
    sid = erase(app.db, email, app.now())  # appointment requests too
    who = f"subscriber {sid}" if sid else "appointment requests only"
    click.echo(f"{email}: erased ({who}); the address is suppressed")

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
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("--url", "urls", multiple=True, help="A feed URL to import (repeatable).")
@click.option(
    "--out",
    "out_dir",
    default="content/articles",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory that receives one <slug>.md per page.",
)
@click.option("--category", "categories", multiple=True, help="Only posts in this category.")
@click.option("--tag", "tags", multiple=True, help="Only posts with this tag.")
@click.option("--since", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Only posts published on or after this day (YYYY-MM-DD).")
@click.option("--slug", "slugs", multiple=True, help="Only the post with this slug (repeatable).")
@click.option("--skip-invalid", is_flag=True,
              help="Import the good files and report the bad ones (default: all or nothing).")
@click.option("--allow-private", is_flag=True,
              help="Let --url fetch private and loopback addresses.")
@click.option("--dry-run", is_flag=True, help="Show what would be removed and kept; write nothing.")
@run
def content_import(app: App, files: tuple[str, ...], urls: tuple[str, ...], out_dir: str,
                   categories: tuple[str, ...], tags: tuple[str, ...], since: datetime | None,
                   slugs: tuple[str, ...], skip_invalid: bool, allow_private: bool,
                   dry_run: bool) -> None:
    """Clean scraped text, saved pages, WordPress exports and feeds into DIR/<slug>.md.

    Text files (.txt), saved pages (.html, .htm, .mhtml), WordPress exports
    (the WXR .xml from Tools > Export, or a saved /wp-json/wp/v2/posts .json),
    RSS/Atom feeds (.xml, or --url).  Site furniture (share bars, cookie
    banners, newsletter and appointment boxes, related posts, comments) is
    removed by the rules in campaigns/html_rules.toml and
    campaigns/cleaning_rules.toml; calls to action become front matter.
    Every file is checked before any is written; with --skip-invalid the good
    files are written and each bad one is reported.  Preview with --dry-run.

    \b
    Example:
      funnel content import page-1.txt page-2.txt --dry-run
      funnel content import page-1.txt page-2.txt --out content/articles
      funnel content import saved/*.html --skip-invalid
      funnel content import export.xml --category "Back Pain" --since 2025-01-01
      funnel content import --url https://clinic.example/feed/
    """
    if not files and not urls:
        raise click.UsageError("give at least one FILE or --url")
    filters = Filters(categories=categories, tags=tags, slugs=slugs,
                      since=since.date() if since else None)
    report = import_paths([Path(f) for f in files], Path(out_dir), urls=urls, filters=filters,
                          dry_run=dry_run, skip_invalid=skip_invalid,
                          allow_private=allow_private)
    for problem in report.problems:
        echo_err(f"skipped {problem}")
    if dry_run:
        click.echo("\n\n".join(format_preview(r) for r in report.results))
        click.echo(f"\ndry run: {len(report.results)} file(s) checked, nothing written")
    else:
        for r in report.results:
            a = r.article
            extra = f", series {a.series} part {a.part}" if a.series else ""
            if a.ctas:
                extra += ", ctas: " + ", ".join(c["kind"] for c in a.ctas)
            click.echo(f"wrote {r.out_path} ({a.words} words{extra})")
    for line in report.series():
        click.echo(line)
    if report.problems:
        raise click.ClickException(f"{len(report.problems)} source(s) not imported (see above)")


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
    found = list_series(app.settings.content_paths)
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
    help=f"When the reader confirms, in --tz (default: now): {WHEN_HELP}.",
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
          --start "friday 19:00"
    """
    series = find_series(app.settings.content_paths, slug)
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
    tz = ZoneInfo(zone_name(tz_name, "--tz"))
    anchor = parse_when(start, tz, app.now(), "--start") if start else app.now()
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
    for reason, n in held_steps(app.db, series.slug):
        click.echo(f"held: {n} message(s) of this series wait in the queue: {reason}")


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
    content = app.settings.content_paths
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


@main.group("campaign", cls=FunnelGroup)
def campaign_group() -> None:
    """One-off broadcasts to a segment: create, schedule, pause, resume, cancel.

    \b
    Example:
      funnel campaign create --segment all --subject "Clinic news" --body news.md
      funnel campaign schedule 3 --at "tuesday 09:00" --local
      funnel campaign status 3
    """


@campaign_group.command("create")
@click.option("--template", default="broadcast", show_default=True, help="Email template.")
@click.option("--segment", default="all", show_default=True, help="Named segment (see `funnel segments list`).")
@click.option("--where", "where", multiple=True, help="Extra filter, ANDed; repeatable.")
@click.option("--subject", "subjects", multiple=True,
              help="Subject line (or 'subject:' in the body's front matter); twice for an A/B test.")
@click.option("--test-share", default=None, help="A/B: share of the audience tested, split evenly (default 20%).")
@click.option("--decide-after", default=None, help="A/B: wait before the winner goes to the rest (default 4h).")
@click.option("--preheader", default=None, help="Preview text shown after the subject.")
@click.option("--body", "body", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown file, optionally with front matter (subject, preheader, ctas); "
                   "without it the Markdown is read from standard input.")
@run
def campaign_create(app: App, template: str, segment: str, where: tuple[str, ...], subjects: tuple[str, ...],
                    test_share: str | None, decide_after: str | None, preheader: str | None,
                    body: Path | None) -> None:
    """Create a draft broadcast and print its id.

    The body is Markdown from --body FILE, or from standard input.  Two
    --subject values make an A/B test: each goes to an equal random slice of
    --test-share of the audience; after --decide-after the subject with more
    human clicks goes to everyone else (A on a tie or with under 5 clicks).

    \b
    Example:
      funnel campaign create --template broadcast --segment all \\
          --subject "Winter opening hours" --body winter.md
      echo "We now open on **Saturdays**." | funnel campaign create --subject "Saturdays"
      funnel campaign create --subject "Open on Saturdays" --subject "Your weekend physio" \\
          --test-share 20% --decide-after 4h --body saturdays.md
    """
    body_md = None
    if body is None and not sys.stdin.isatty():
        body_md = sys.stdin.read()
    cid = broadcasts.create(app.db, app.settings, app.now(), subject=subjects[0] if subjects else None,
                            segment=segment, where=where, preheader=preheader, body_path=body,
                            body_md=body_md, template=template,
                            ab_subjects=subjects[1:],
                            test_share=test_share, decide_after=decide_after)
    click.echo(cid)


@campaign_group.command("schedule")
@click.argument("campaign_id", type=int)
@click.option("--at", default=None, help=f"When, in --tz: {WHEN_HELP}.")
@click.option("--in", "in_", default=None, help='Delay from now, e.g. "2h", "90m", "3d", "1w".')
@click.option("--tz", "tz", default=None, help="Zone of --at (default: the clinic's, FUNNEL_TIMEZONE).")
@click.option("--local", is_flag=True, help="Send at --at in each reader's own time zone.")
@click.option("--now", "send_now", is_flag=True, help="Queue it now; `funnel send` or the worker delivers it.")
@run
@preflight
def campaign_schedule(app: App, campaign_id: int, at: str | None, in_: str | None, tz: str | None,
                      local: bool, send_now: bool) -> None:
    """Schedule a draft: at a time (clinic zone, --tz, or --local per reader), --in a delay, or --now.

    \b
    Example:
      funnel campaign schedule 3 --at "tomorrow 09:00"
      funnel campaign schedule 3 --at "monday 09:00" --tz America/New_York
      funnel campaign schedule 3 --at "in 7 days 09:00" --local
      funnel campaign schedule 3 --at "2026-12-01 09:00"
      funnel campaign schedule 3 --in 2h
      funnel campaign schedule 3 --now
    """
    s = app.settings
    c = broadcasts.schedule_campaign(app.db, s, campaign_id, app.now(), at=at, tz=tz, local=local,
                          send_now=send_now, in_=in_)
    if send_now:
        total = broadcasts.status(app.db, s, campaign_id, app.now()).audience or 0
        with progress(total, "queueing") as bar:
            n = broadcasts.queue(app.db, s, campaign_id, app.now(), progress=bar.update)
        click.echo(f"campaign {campaign_id}: {n} message(s) queued; `funnel send` or the worker sends them")
    elif c.local_time:
        click.echo(f"campaign {campaign_id}: scheduled for {c.local_at} in each reader's time zone")
    else:
        when = parse_iso(c.send_at)
        zone = ZoneInfo(tz) if tz else s.zone
        click.echo(f"campaign {campaign_id}: scheduled for {when.astimezone(zone):%Y-%m-%d %H:%M %Z} "
                   f"({when:%Y-%m-%d %H:%M} UTC)")


@campaign_group.command("pause")
@click.argument("campaign_id", type=int)
@run
def campaign_pause(app: App, campaign_id: int) -> None:
    """Pause sending: nothing more of it goes out until `resume`.

    \b
    Example:
      funnel campaign pause 3
    """
    click.echo(f"campaign {campaign_id}: {broadcasts.pause(app.db, campaign_id, app.now()).status}")


@campaign_group.command("resume")
@click.argument("campaign_id", type=int)
@run
def campaign_resume(app: App, campaign_id: int) -> None:
    """Resume a paused campaign where it stopped (nobody gets it twice).

    \b
    Example:
      funnel campaign resume 3
    """
    click.echo(f"campaign {campaign_id}: {broadcasts.resume(app.db, campaign_id, app.now()).status}")


@campaign_group.command("cancel")
@click.argument("campaign_id", type=int)
@run
def campaign_cancel(app: App, campaign_id: int) -> None:
    """Cancel a campaign and every message of it not yet sent.

    \b
    Example:
      funnel campaign cancel 3
    """
    _campaign, n = broadcasts.cancel(app.db, campaign_id, app.now())
    click.echo(f"campaign {campaign_id}: cancelled; {n} unsent message(s) cancelled")


@campaign_group.command("status")
@click.argument("campaign_id", type=int)
@run
def campaign_status(app: App, campaign_id: int) -> None:
    """Counts per delivery state and whether the campaign has finished.

    \b
    Example:
      funnel campaign status 3
    """
    st = broadcasts.status(app.db, app.settings, campaign_id, app.now())
    c = st.campaign
    click.echo(f"campaign {c.id}: {c.status}  segment {c.segment}  subject {c.subject!r}")
    if st.audience is not None:
        click.echo(f"  audience now: {st.audience} subscriber(s) (rows are made when it starts)")
    for state in ("queued", "sending", "retry", "sent", "failed", "suppressed", "expired", "cancelled"):
        if st.counts.get(state):
            click.echo(f"  {state:<10} {st.counts[state]}")
    click.echo(f"  total      {st.total}")
    for reason, n in st.held:
        click.echo(f"  held       {n}  {reason}")
    for line in _ab_lines(st):
        click.echo(line)
    click.echo("  finished: " + ("yes" if st.finished else "no"))


def _ab_lines(st) -> list[str]:
    """An A/B campaign's variants (test slices) and its decision, for `campaign status`."""
    summary = st.ab_summary
    if summary is None:
        return []
    lines = [f"  A/B test: {summary.plan}"]
    for name, v in st.variants.items():
        rate = "-" if v["rate"] is None else f"{v['rate']:.1f}%"
        lines.append(f"  variant {name}  sent {v['sent']}  human clicks {v['human_clicks']}  "
                     f"click rate {rate}  {v['subject']!r}")
    lines.append(f"  decision: {summary.decision}")
    return lines


@campaign_group.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@run
def campaign_list(app: App, limit: int) -> None:
    """List broadcasts, newest first.

    \b
    Example:
      funnel campaign list
    """
    rows = [("ID", "STATUS", "WHEN", "SEGMENT", "SENT", "SUBJECT")]
    for r in broadcasts.listing(app.db, limit=limit):
        rows.append((str(r["id"]), r["status"], r["when"], r["segment"], f"{r['sent']}/{r['rows']}",
                     r["subject"]))
    click.echo(_table(rows) if len(rows) > 1 else "no campaigns yet")


@main.group("segments", cls=FunnelGroup)
def segments_group() -> None:
    """Named subscriber filters (segments.toml) and ad-hoc --where expressions.

    \b
    Keys: status, stream, source, signed_up, series:<slug>, tz, webinar:<slug>;
    operators = != (and >= <= > < for signed_up and series); | means OR.

    \b
    Example:
      funnel segments list
      funnel segments count all --where "series:importance-of-exercise>=3"
    """


@segments_group.command("count")
@click.argument("name", required=False)
@click.option("--where", "where", multiple=True, help='Filter such as "tz=Europe/London"; repeatable, ANDed.')
@run
def segments_count(app: App, name: str | None, where: tuple[str, ...]) -> None:
    """How many subscribers match segment NAME and/or the --where filters.

    \b
    Example:
      funnel segments count engaged
      funnel segments count --where "webinar:spine-health=registered" --where "status=active"
    """
    click.echo(segments.count(app.db, app.settings, name, where=where, now=app.now()))


@segments_group.command("list")
@run
def segments_list(app: App) -> None:
    """Every named segment, its definition and size.

    \b
    Example:
      funnel segments list
    """
    rows = [("NAME", "MEMBERS", "WHERE")]
    for seg in segments.listing(app.db, app.settings, app.now()):
        rows.append((seg["name"], str(seg["count"]), " AND ".join(seg["where"])))
    click.echo(_table(rows))


@series_group.command("enroll")
@click.argument("slug")
@click.option("--segment", default=None, help="Named segment to enrol.")
@click.option("--where", "where", multiple=True, help="Filter expression; repeatable, ANDed.")
@click.option("--allow-gaps", is_flag=True, help="Enrol even though parts are missing.")
@run
@preflight
def series_enroll(app: App, slug: str, segment: str | None, where: tuple[str, ...], allow_gaps: bool) -> None:
    """Enrol existing subscribers in a series (safe to repeat).

    Only active subscribers who haven't left the series are enrolled; their
    first step goes out with the next `funnel send` or worker pass.

    \b
    Example:
      funnel series enroll importance-of-exercise --segment all
      funnel series enroll importance-of-exercise --where "signed_up<2026-01-01"
    """
    total = segments.count(app.db, app.settings, segment, where=where, now=app.now()) if segment or where else 0
    with progress(total, "enrolling") as bar:
        report = enrollment.enroll_segment(app.db, app.settings, slug, app.now(), segment=segment, where=where,
                                allow_gaps=allow_gaps, progress=bar.update)
    click.echo(f"{slug}: {report.line()}")


@series_group.command("diff")
@click.argument("slug")
@run
def series_diff(app: App, slug: str) -> None:
    """What applying the series' current steps would change for enrolled readers.

    Compares content/series/SLUG with the version last applied: per step key
    new / removed / moved, and which step each enrolled reader gets next
    before and after.  Nobody is ever sent a step twice.

    \b
    Example:
      funnel series diff importance-of-exercise
      funnel series apply importance-of-exercise
    """
    d = enrollment.diff(app.db, app.settings, slug)
    if d.applied is None:
        click.echo(f"{slug}: never applied; `funnel series apply {slug}` records the current steps")
    else:
        click.echo(f"{slug}: applied version {d.applied.number} ({d.applied.applied_at[:16]} UTC) "
                   f"-> current content: " + ("changed" if d.changed else "no structural change"))
    rows = [("STEP", "CHANGE", "POSITION")]
    for ch in d.changes:
        pos = {"new": f"-> {ch.new_position}", "removed": f"{ch.old_position} ->"}.get(
            ch.change, f"{ch.old_position} -> {ch.new_position}")
        rows.append((ch.key, ch.change, pos))
    click.echo(_table(rows))
    click.echo(f"next step for {d.readers} enrolled reader(s):")
    rows = [("STEP", "NOW", "AFTER APPLY")]
    for key in [*d.current_keys, *[k for k in d.next_before if k not in d.current_keys]]:
        if d.next_before.get(key) or d.next_after.get(key):
            rows.append((key, str(d.next_before.get(key, 0)), str(d.next_after.get(key, 0))))
    if len(rows) > 1:
        click.echo(_table(rows))


@series_group.command("apply")
@click.argument("slug")
@run
def series_apply(app: App, slug: str) -> None:
    """Let the scheduler use the series' current steps (after `funnel series diff`).

    Until then a series whose steps were added, removed or reordered is held.

    \b
    Example:
      funnel series apply importance-of-exercise
    """
    number, changed = enrollment.apply_version(app.db, enrollment.load(app.settings, slug), app.now())
    click.echo(f"{slug}: version {number} " + ("applied" if changed else "was already applied"))


@main.command("worker")
@click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              help="Seconds between passes.")
@click.option("--connections", type=click.IntRange(1, 16), default=1, show_default=True,
              help="Senders sending at once (processes), each with its own relay connection.")
@run
@preflight
def worker_cmd(app: App, interval: float, connections: int) -> None:
    """Run the scheduler and sender in a loop until Ctrl-C (or SIGTERM).

    Each pass queues due series steps and broadcasts, then sends what is
    due.  Several workers (and cron `funnel send`) may run at once; with
    --connections N one worker sends over N relay connections at once.

    \b
    Example:
      funnel worker --interval 5
      funnel worker --connections 2
    """
    from web.serve import run_worker_until_signal  # late: see "Late imports, measured"

    seen_problems: set[str] = set()

    def on_summary(ticked: dict, summary) -> None:
        for problem in ticked["problems"]:
            if problem not in seen_problems:
                seen_problems.add(problem)
                echo_err(f"warning: {problem}")
        parts = [p for p in (tick_line(ticked), summary.line() if summary.claimed else "") if p]
        if parts:
            click.echo(f"{app.now():%Y-%m-%d %H:%M:%S} " + "; ".join(parts))
        errors = summary.errors[:5]
        if errors != last_errors:  # a relay that stays down is reported once, not every pass
            for err in errors:
                echo_err(err)
            last_errors[:] = errors

    last_errors: list[str] = []
    click.echo(f"worker started (every {interval:g} s); Ctrl-C to stop", err=True)
    loops = run_worker_until_signal(app.settings, clock=app.now, interval=interval,
                                    on_summary=on_summary, connections=connections,
                                    on_error=lambda exc: echo_err(f"error: {exc}"))
    click.echo(f"worker stopped after {loops} pass(es)", err=True)


# === delivery: bounces and the mailto unsubscribe inbox ===
@main.group("bounces", cls=FunnelGroup)
def bounces_group() -> None:
    """Bounce reports (DSN) and spam complaints (ARF) mailed back to bounce+ROW-MAC@domain.

    `bounces process` is the same command as `inbox process`.

    \b
    Example:
      funnel bounces process /var/mail/bounces/      (a Maildir)
      funnel bounces process dsn-1.eml dsn-2.eml
    """


@main.group("inbox", cls=FunnelGroup)
def inbox_group() -> None:
    """Mail that comes back: bounces, complaints and mailto unsubscribe requests.

    \b
    Example:
      funnel inbox process ~/Maildir/.funnel
    """


_INBOX_HELP = """Record bounces and complaints, and apply mailto unsubscribes, from files or Maildirs.

    Reports mailed to bounce+ROW-MAC@domain (signed) or quoting one of our
    Message-IDs are recorded when they are about that row's recipient: hard
    bounces about the address and complaints suppress the reader at once;
    soft bounces add to a score (Mailman's rules).  A message to
    unsubscribe+ROW-MAC@domain unsubscribes that reader exactly like the
    one-click link.  A report or request that does not verify changes nothing
    and is counted as unmatched.  Handled Maildir messages move to cur/ with
    the S flag; a message that can't be read is reported as FILE: reason and
    left in place.

    \b
    Example (crontab, every 10 minutes):
      */10 * * * * cd /srv/funnel && .venv/bin/funnel inbox process ~/Maildir/.funnel
    """


def _process_inbox(app: App, paths: tuple[Path, ...]) -> None:
    report = process_paths(app.db, app.settings, list(paths), app.now())
    for problem in report.problems + report.notes:
        echo_err(problem)
    click.echo(report.line())


@bounces_group.command("process", help=_INBOX_HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@run
def bounces_process(app: App, paths: tuple[Path, ...]) -> None:
    _process_inbox(app, paths)


@inbox_group.command("process", help=_INBOX_HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@run
def inbox_process(app: App, paths: tuple[Path, ...]) -> None:
    _process_inbox(app, paths)


# === web: serve / up / form ===
@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="waitress worker threads [default: the server_threads setting, 32].",
)
@run
@preflight
def serve_cmd(app: App, host: str, port: int, threads: int | None) -> None:
    """Serve the public site (waitress) until Ctrl-C / SIGTERM.

    Production runs this behind nginx and `funnel worker` beside it; see
    docs/production.md.  Connection limits and timeouts come from the
    server_* settings; behind a proxy set trusted_proxies = 1.  If the server
    thread ever dies, the command exits with status 1 so systemd restarts it.
    GET /healthz answers 200 "ok", or 503 with one line per problem.

    \b
    Example:
      funnel serve --host 127.0.0.1 --port 8000
      FUNNEL_TRUSTED_PROXIES=1 funnel serve --threads 16
    """
    from web.serve import serve  # late import: see "Late imports, measured" at the top

    serve(
        app.settings,
        host,
        port,
        threads,
        on_ready=lambda url: click.echo(
            f"serving {url} (public URL {app.settings.base_url}); Ctrl-C stops"
        ),
    )


@main.command("up")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=8000,
    show_default=True,
    help="Port of the site on 127.0.0.1.",
)
@click.option(
    "--smtp-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Port of the embedded SMTP server [default: the port of FUNNEL_SMTP_URL, 8025].",
)
@click.option(
    "--no-devmail", is_flag=True, help="Send to FUNNEL_SMTP_URL instead of the dev inbox."
)
@run
@preflight
def up_cmd(app: App, port: int, smtp_port: int | None, no_devmail: bool) -> None:
    """Run everything on this machine: site, worker and a dev SMTP inbox.

    Creates or upgrades the database first, then serves the site on
    http://127.0.0.1:PORT, sends due mail every second, and catches every
    message in an embedded SMTP server shown at /dev/inbox (FUNNEL_DEV=1).
    Ctrl-C stops it all.  `make up` runs this with FUNNEL_DEV=1.

    \b
    Example:
      FUNNEL_DEV=1 funnel up --port 8000
    """
    from web.serve import (  # late import: see "Late imports, measured" at the top
        configure_logging,
        dev_smtp_port,
        prepare_up,
        start_stack,
        wait_for_signal,
    )

    configure_logging()
    ready = prepare_up(
        app.settings,
        port,
        app.now(),
        on_migrated=lambda applied: click.echo(
            f"{app.settings.db}: "
            + (f"applied {', '.join(applied)}" if applied else "schema is up to date")
        ),
    )
    s, demo = ready.settings, ready.demo
    relay = s.relays[0]
    smtp_port = dev_smtp_port(s, smtp_port, no_devmail)

    def report(ticked: dict, summary) -> None:
        queued = tick_line(ticked) if ticked else ""
        if queued:
            click.echo(f"worker: {queued}")
        if summary is not None and (summary.sent or summary.failed or summary.retry):
            click.echo(f"worker: {summary.line()}")

    stack = start_stack(s, port=port, smtp_port=smtp_port, clock=app.now, on_summary=report)
    try:
        site = stack.url
        click.echo(f"\nfunnel is up:\n  site        {site}/")
        if stack.devmail is not None and s.dev:
            click.echo(f"  dev inbox   {site}/dev/inbox")
        if stack.devmail is not None:
            click.echo(
                f"  dev SMTP    {stack.devmail.url}  (catches every message; nothing leaves this machine)"
            )
        else:
            click.echo(f"  mail        sent to {relay.label} (FUNNEL_SMTP_URL)")
        click.echo("  worker      sends due mail every second")
        if demo is not None:
            click.echo(f"  webinar     {site}/w/{demo.slug}  (the demo Spine Health Webinar)")
        click.echo(f"  appointment {site}/appointment  (the request form the appointment buttons open)")
        if s.admin_enabled:
            click.echo(f"  admin       {site}/admin/  (first user: funnel admin add-user EMAIL)")
        if s.base_url.rstrip("/") != site:
            click.echo(f"  links in emails point to {s.base_url} (FUNNEL_BASE_URL)")
        if not s.dev:
            click.echo("  (set FUNNEL_DEV=1 to see caught mail at /dev/inbox)")
        click.echo("Press Ctrl-C to stop.")
        wait_for_signal(stack.stop_event, stack.problem)
    finally:
        click.echo("stopping...")
        stack.stop()
        click.echo("stopped")


@main.group("form", cls=FunnelGroup)
def form_group() -> None:
    """The signup form for other sites.

    \b
    Example:
      funnel form snippet > signup-snippet.html
    """


@form_group.command("snippet")
@click.option("--appointment", is_flag=True,
              help="The appointment request form instead of the newsletter signup.")
@run
def form_snippet_cmd(app: App, appointment: bool) -> None:
    """Print HTML to paste into the clinic's own site.

    The form posts to BASE_URL/subscribe/embed (with --appointment:
    BASE_URL/appointment/embed), which shows the reader a "check your
    details" page on the funnel site with one button (a form on another site
    can't carry our anti-forgery cookie); then the usual double opt-in
    follows, or the appointment request is sent.

    \b
    Example:
      FUNNEL_BASE_URL=https://news.clinic.example funnel form snippet
      funnel form snippet --appointment > appointment-snippet.html
    """
    # late imports: see "Late imports, measured" at the top
    if appointment:
        from web.appointments import appointment_snippet

        click.echo(appointment_snippet(app.settings), nl=False)
        return
    from web.pages import form_snippet

    click.echo(form_snippet(app.settings), nl=False)


# === webinars / report ===
@main.group("webinar", cls=FunnelGroup)
def webinar_group() -> None:
    """Live webinars: create, invite a segment, register, attendance, follow-ups.

    \b
    Example:
      funnel webinar create spine-health --title "Spine Health Webinar" \\
          --start "thursday 18:00" --tz Europe/London --join-url https://meet.example/spine
      funnel webinar invite spine-health --segment "series:importance-of-exercise>=4" \\
          --segment "webinar:spine-health!=registered"
      funnel webinar attendance spine-health zoom-attendees.csv
    """


def _webinar_options(fn):
    """The editable fields, shared by create and edit (None = not given)."""
    options = [
        click.option("--title", help="Title shown in emails and on the page."),
        click.option("--description", help="A paragraph for the registration page."),
        click.option("--start", help=f"Start, wall-clock in --tz: {WHEN_HELP}."),
        click.option("--tz", "timezone", help="IANA time zone of --start, e.g. Europe/London."),
        click.option("--duration", "duration_minutes", type=int, help="Length in minutes (default 60)."),
        click.option("--join-url", help="The https:// link people join with (Zoom, Meet...)."),
        click.option("--replay-url", help="The https:// recording, for those who missed it."),
        click.option("--capacity", help="Seats; later registrants are waitlisted ('unlimited' for none)."),
        click.option("--host", "host_name", help="Host shown on the page."),
        click.option("--offer", type=click.Choice(["appointment", "programme"]),
                     help="What attendees are offered afterwards."),
        click.option("--reminders", "reminder_offsets",
                     help='Minutes before the start, e.g. "1440,60,10".'),
        click.option("--followup-delay", "followup_delay_minutes", type=int,
                     help="Minutes after the end before follow-ups go out (default 120)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _describe_webinar(w, counts=None) -> str:
    local = w.local_start
    lines = [
        f"{w.slug}: {w.title} [{w.status}]",
        f"  starts:    {local:%a %Y-%m-%d %H:%M %Z} ({w.timezone}), {w.duration_minutes} min",
        f"  join:      {w.join_url}",
        f"  replay:    {w.replay_url or '-'}",
        f"  capacity:  {w.capacity or 'unlimited'}   host: {w.host_name or '-'}   offer: {w.offer}",
        f"  reminders: {', '.join(str(m) for m in w.reminder_offsets)} min before; follow-ups "
        f"{w.followup_delay_minutes} min after the end; SEQUENCE {w.sequence}",
    ]
    if counts is not None:
        lines.append("  registrations: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    return "\n".join(lines)


@webinar_group.command("create")
@click.argument("slug", required=False)
@click.option("--from", "from_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Read the webinar from a TOML file (options given here override it).")
@_webinar_options
@run
def webinar_create(app: App, slug: str | None, from_file: Path | None, **fields) -> None:
    """Create a webinar (times are wall-clock in --tz and stored in UTC).

    \b
    Example:
      funnel webinar create spine-health --title "Spine Health Webinar" \\
          --start "thursday 18:00" --tz Europe/London --join-url https://meet.example/spine
      funnel webinar create --from content/webinars/spine-health.toml
    """
    if from_file is not None:
        w = create_from_file(app.db, app.settings, from_file, app.now(), {"slug": slug, **fields})
    else:
        if not slug:
            raise click.UsageError("give a SLUG, or --from FILE")
        w = create_webinar(app.db, app.settings, {"slug": slug, **fields}, app.now())
    click.echo(_describe_webinar(w))
    click.echo(f"page: {app.settings.url('/w/' + w.slug)}")


@webinar_group.command("load")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@run
def webinar_load(app: App, files: tuple[Path, ...]) -> None:
    """Create webinars from TOML files (default: content/webinars/*.toml).

    An existing webinar is kept, except that one whose file gives a relative
    start (start = "thursday 18:00", a standing weekly slot) moves to its next
    slot once its session is over: a reschedule, registrants get the update.

    \b
    Example:
      funnel webinar load
      funnel webinar load content/webinars/spine-health.toml
    """
    paths = list(files) or webinar_files(app.settings)
    if not paths:
        click.echo("no webinar files in " + " or ".join(str(d / "webinars") for d in app.settings.content_paths))
    for done in load_files(app.db, app.settings, paths, app.now()):
        when = f"{done.webinar.local_start:%Y-%m-%d %H:%M %Z}"
        if done.action == "created":
            click.echo(f"{done.path}: created {done.slug} ({when})")
        elif done.action == "moved":
            click.echo(f"{done.path}: {done.slug} was over; moved to the next slot ({when}), "
                       f"SEQUENCE {done.webinar.sequence}, {done.edit.updates_queued} update(s) queued")
        else:
            click.echo(f"{done.path}: {done.slug} already exists; left as it is ({when})")


@webinar_group.command("list")
@run
def webinar_list(app: App) -> None:
    """List webinars with their registrations.

    \b
    Example:
      funnel webinar list
    """
    found = list_webinars(app.db)
    if not found:
        click.echo("no webinars yet; create one with `funnel webinar create`")
        return
    rows = [("SLUG", "STATUS", "STARTS", "REGISTRATIONS", "TITLE")]
    for w in found:
        counts = registration_counts(app.db, w)
        regs = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
        rows.append((w.slug, w.status, f"{w.local_start:%Y-%m-%d %H:%M %Z}", regs, w.title))
    click.echo(_table(rows))


@webinar_group.command("show")
@click.argument("slug")
@run
def webinar_show(app: App, slug: str) -> None:
    """Show one webinar: settings, registrations and its mail in the outbox.

    \b
    Example:
      funnel webinar show spine-health
    """
    w = get_webinar(app.db, slug)
    click.echo(_describe_webinar(w, registration_counts(app.db, w)))
    for kind, states in sorted(outbox_counts(app.db, w).items()):
        click.echo(f"  {kind}: " + ", ".join(f"{n} {s}" for s, n in sorted(states.items())))
    click.echo(f"  page: {app.settings.url('/w/' + w.slug)}")


@webinar_group.command("edit")
@click.argument("slug")
@_webinar_options
@run
@preflight
def webinar_edit(app: App, slug: str, **fields) -> None:
    """Change a webinar.  A new time, length or join link sends registrants an update
    with a calendar file that replaces their entry (SEQUENCE+1) and recomputes reminders.

    \b
    Example:
      funnel webinar edit spine-health --start "in 14 days 18:00"
      funnel webinar edit spine-health --replay-url https://video.example/replay
    """
    res = edit_webinar(app.db, app.settings, slug, fields, app.now())
    if not res.changed:
        click.echo(f"{slug}: nothing changed")
        return
    click.echo(_describe_webinar(res.webinar))
    click.echo(f"changed: {', '.join(res.changed)}")
    if res.rescheduled:
        click.echo(f"SEQUENCE {res.webinar.sequence}: {res.updates_queued} update(s) queued, "
                   f"{res.reminders_cancelled} reminder(s) replaced by {res.reminders_queued}")
    elif res.reminders_queued or res.reminders_cancelled:
        click.echo(f"reminders: {res.reminders_cancelled} replaced by {res.reminders_queued}")
    if res.promoted:
        click.echo(f"{res.promoted} waitlisted registrant(s) now have a seat")


@webinar_group.command("cancel")
@click.argument("slug")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@run
@preflight
def webinar_cancel(app: App, slug: str, yes: bool) -> None:
    """Cancel a webinar: registrants get a cancellation (METHOD:CANCEL); queued
    invites and reminders are dropped.

    \b
    Example:
      funnel webinar cancel spine-health --yes
    """
    if not yes:
        click.confirm(f"Cancel webinar {slug} and tell its registrants?", abort=True)
    res = cancel_webinar(app.db, app.settings, slug, app.now())
    click.echo(f"{slug}: cancelled; {res.notices_queued} cancellation(s) queued, "
               f"{res.rows_cancelled} queued message(s) dropped, "
               f"{res.registrations_cancelled} registration(s) cancelled")


@webinar_group.command("invite")
@click.argument("slug")
@click.option("--segment", "segments_", multiple=True, required=True,
              help='A segment name ("all") or expression ("series:importance-of-exercise>=4"); repeat to AND.')
@click.option("--where", "where", multiple=True, help="More expressions, ANDed.")
@click.option("--at", "at", help=f"When to send, in the webinar's zone (default: now): {WHEN_HELP}.")
@run
@preflight
def webinar_invite(app: App, slug: str, segments_: tuple[str, ...], where: tuple[str, ...],
                   at: str | None) -> None:
    """Queue the invitation for a segment (once per person; expires at the start).

    Only active people receiving webinar invitations are invited, and never
    someone already registered.

    \b
    Example:
      funnel webinar invite spine-health --segment "series:importance-of-exercise>=4" \\
          --segment "webinar:spine-health!=registered"
      funnel webinar invite spine-health --segment all --at "tomorrow 09:00"
    """
    when = parse_when(at, get_webinar(app.db, slug).zone, app.now(), "--at") if at else None
    res = invite(app.db, app.settings, slug, split_segment(segments_), app.now(), where=where, at=when)
    click.echo(f"{slug}: {res.queued} invitation(s) queued for "
               f"{res.due_at.astimezone(res.webinar.zone):%Y-%m-%d %H:%M %Z}"
               f"{f', {res.already} already invited' if res.already else ''}")


@webinar_group.command("register")
@click.argument("slug")
@click.argument("email")
@click.option("--name", default="", help="Display name.")
@click.option("--tz", "timezone", default=None, help="Their IANA time zone (for the times in emails).")
@run
@preflight
def webinar_register(app: App, slug: str, email: str, name: str, timezone: str | None) -> None:
    """Register someone (e.g. who phoned the clinic); they get the confirmation.

    This does not subscribe them to the newsletter.

    \b
    Example:
      funnel webinar register spine-health sam@example.com --name "Sam Lee" --tz Europe/London
    """
    res = register(app.db, app.settings, slug, app.now(), email=email, name=name, timezone=timezone,
                   source="admin", consent_action="imported")
    message = {
        "registered": "registered; the confirmation and reminders are queued",
        "waitlisted": "the webinar is full: on the waitlist",
        "already": f"already {res.registration_status}",
        "suppressed": "is suppressed (bounced, complained or erased); not registered",
        "verify": "unsubscribed or suppressed: only a verification email is queued; they are "
        "registered when they confirm it",
    }[res.status]
    click.echo(f"{email}: {message}")


@webinar_group.command("registrants")
@click.argument("slug")
@run
def webinar_registrants(app: App, slug: str) -> None:
    """List who registered and their state.

    \b
    Example:
      funnel webinar registrants spine-health
    """
    rows = registrants(app.db, slug)
    for r in rows:
        minutes = f"{r['attended_minutes']} min" if r["attended_minutes"] is not None else ""
        click.echo(f"{r['email'] or '(erased)':<40} {r['name']:<20} {r['status']:<11} "
                   f"{r['source']:<8} {r['registered_at'][:16]} {minutes}")
    click.echo(f"{len(rows)} registrant(s)")


@webinar_group.command("export")
@click.argument("slug")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: stdout).")
@run
def webinar_export(app: App, slug: str, out: Path | None) -> None:
    """Write the registrants and their states as CSV.

    \b
    Example:
      funnel webinar export spine-health --out spine-health.csv
    """
    if out is None:
        n = export_registrants(app.db, slug, sys.stdout)
    else:
        tmp = out.with_suffix(out.suffix + ".part")
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            n = export_registrants(app.db, slug, fh)
        tmp.replace(out)
    echo_err(f"exported {n} registrant(s)")


@webinar_group.command("attendance")
@click.argument("slug")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Import the good rows and report the bad ones.")
@run
@preflight
def webinar_attendance(app: App, slug: str, file: Path, skip_invalid: bool) -> None:
    """Import who attended from a Zoom-style CSV and queue the follow-ups.

    Columns (any case): "User Email" or "Email", "Join Time", "Duration
    (Minutes)".  Everyone registered and not in the file is a no-show.
    Attendees get a thank-you with the offer; no-shows get the replay (or word
    of the next session), followup-delay minutes after the end.

    \b
    Example:
      funnel webinar attendance spine-health zoom-attendees.csv
    """
    try:
        report = import_attendance(app.db, app.settings, slug, file, app.now(),
                                   skip_invalid=skip_invalid)
    except RowsRejected as exc:
        for problem in exc.report.problems[:50]:
            echo_err(problem)
        raise
    for line in (report.problems + report.unknown)[:50]:
        echo_err(line)
    click.echo(f"{file}: {report.attended} attended, {report.no_show} no-show, "
               f"{len(report.unknown)} not matched; {report.followups_queued} follow-up(s) queued")


@main.command("report")
@click.option("--since", help="First day (YYYY-MM-DD, the clinic's time zone).")
@click.option("--until", help="Last day, inclusive (YYYY-MM-DD).")
@click.option("--html", "html_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a self-contained HTML page with a funnel chart.")
@run
def report_cmd(app: App, since: str | None, until: str | None, html_out: Path | None) -> None:
    """The funnel from signup to offer click, with the conversion at each step.

    Counted from the event log: people who signed up, confirmed, received
    each part of each series, were invited, registered, attended and clicked
    the offer.

    \b
    Example:
      funnel report
      funnel report --since 2026-11-01 --until 2026-11-30 --html report.html
    """
    rep = compute(app.db, app.settings, since=since, until=until, now=app.now())
    click.echo(render_text(rep))
    if html_out is not None:
        html_out.write_text(render_html(rep, app.settings.site_name), encoding="utf-8")
        echo_err(f"wrote {html_out}")




# --- appointments ---
@main.group("appointments", cls=FunnelGroup)
def appointments_group() -> None:
    """Appointment requests from the /appointment page: list, show, mark, export.

    \b
    Example:
      funnel appointments list --status new
      funnel appointments mark 12 contacted --note "left a voicemail"
      funnel appointments export --out requests.csv
    """


@appointments_group.command("list")
@click.option("--status", type=click.Choice(["new", "contacted", "booked", "closed"]))
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@run
def appointments_list(app: App, status: str | None, limit: int) -> None:
    """List appointment requests, newest first.

    \b
    Example:
      funnel appointments list
      funnel appointments list --status new
    """
    rows = appointments.list_requests(app.db, status=status, limit=limit)
    for a in rows:
        click.echo(f"{a.id:>6}  {a.status:<10} {a.created_at:%Y-%m-%d %H:%M}  {a.name[:30]:<30} "
                   f"{a.contact_method:<6} {a.contact or '-'}")
    click.echo(f"{len(rows)} shown")


@appointments_group.command("show")
@click.argument("appointment_id", type=int)
@run
def appointments_show(app: App, appointment_id: int) -> None:
    """Show one request: contact details, method, times, reason, attribution and notes.

    \b
    Example:
      funnel appointments show 12
    """
    a = appointments.get_request(app.db, appointment_id)
    rows = [
        ("id", a.id), ("status", a.status), ("received", f"{a.created_at:%Y-%m-%d %H:%M} UTC"),
        ("name", a.name), ("email", a.email or "-"), ("phone", a.phone or "-"),
        ("contact by", a.method_label), ("times", a.times_label), ("newsletter", "yes" if a.newsletter else "no"),
        ("source", a.source or "-"),
        ("came from", ", ".join(f"{k.removeprefix('attr_')}={v}" for k, v in a.attribution.items()) or "-"),
    ]  # fmt: skip
    for key, value in rows:
        click.echo(f"{key:>10}: {value}")
    click.echo("    reason:")
    for line in (a.reason or "-").splitlines():
        click.echo(f"            {line}")
    click.echo("     notes:" + ("" if a.notes else " -"))
    for n in a.notes:
        click.echo(f"            {n['at'][:16].replace('T', ' ')} {n['status']}"
                   + (f": {n['note']}" if n["note"] else ""))


@appointments_group.command("mark")
@click.argument("appointment_id", type=int)
@click.argument("status", type=click.Choice(["contacted", "booked", "closed"]))
@click.option("--note", default="", help="What happened, kept with the time.")
@run
def appointments_mark(app: App, appointment_id: int, status: str, note: str) -> None:
    """Move a request on: new -> contacted -> booked or closed (also new -> closed).

    \b
    Example:
      funnel appointments mark 12 contacted --note "called, will ring back Friday"
      funnel appointments mark 12 booked --note "Tue 10:30 with Sam"
    """
    a = appointments.mark(app.db, appointment_id, status, app.now(), note)
    click.echo(f"appointment {a.id}: {a.status}")


@appointments_group.command("export")
@click.option("--status", type=click.Choice(["new", "contacted", "booked", "closed"]))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File to write (default: stdout).")
@run
def appointments_export(app: App, status: str | None, out: Path | None) -> None:
    """Export appointment requests as CSV (oldest first), with notes and attribution.

    \b
    Example:
      funnel appointments export --out requests.csv
      funnel appointments export --status booked
    """
    if out is None:
        n = appointments.export_csv(app.db, sys.stdout, status=status)
    else:
        tmp = out.with_suffix(out.suffix + ".part")
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            n = appointments.export_csv(app.db, fh, status=status)
        tmp.replace(out)
    echo_err(f"exported {n} appointment request(s)")


@appointments_group.command("webhook-secret")
@run
def appointments_webhook_secret(app: App) -> None:
    """Print the secret that signs appointment webhooks (X-Funnel-Signature).

    It is appointment_webhook_secret, or one derived from the first secret
    key when that is not set (so it changes when the keys are rotated).

    \b
    Example:
      funnel appointments webhook-secret
    """
    click.echo(appointments.webhook_secret(app.settings))
# --- admin console users ---
def _new_password() -> str:
    return click.prompt("Password (12 characters or more)", hide_input=True,
                        confirmation_prompt="Repeat the password")


@main.group("admin", cls=FunnelGroup)
def admin_group() -> None:
    """Users of the web admin console at /admin.

    \b
    Example:
      funnel admin add-user manager@clinic.example
      funnel admin totp-setup manager@clinic.example --qr totp.svg
    """


@admin_group.command("add-user")
@click.argument("email")
@run
def admin_add_user(app: App, email: str) -> None:
    """Create a console user; asks for the password twice (nothing is shown).

    The password needs 12 characters or more and must not be a common one.

    \b
    Example:
      funnel admin add-user manager@clinic.example
    """
    user = admins.add_user(app.db, email, _new_password(), app.now())
    click.echo(f"{user.email}: admin user created; sign in at {app.settings.url('/admin/')}")


@admin_group.command("list-users")
@run
def admin_list_users(app: App) -> None:
    """Console users: second factor on or off, disabled, open sessions.

    \b
    Example:
      funnel admin list-users
    """
    for u in admins.list_users(app.db):
        state = f"disabled {u['disabled_at'][:10]}" if u["disabled_at"] else "active"
        click.echo(f"{u['email']}\t{state}\ttotp {'on' if u['totp'] else 'off'}\t"
                   f"{u['sessions']} session(s)")


@admin_group.command("disable-user")
@click.argument("email")
@run
def admin_disable_user(app: App, email: str) -> None:
    """Lock a user out and end their sessions (reset-password lets them back in).

    \b
    Example:
      funnel admin disable-user old.manager@clinic.example
    """
    admins.disable_user(app.db, email, app.now())
    click.echo(f"{email}: disabled; their sessions have ended")


@admin_group.command("reset-password")
@click.argument("email")
@run
def admin_reset_password(app: App, email: str) -> None:
    """Set a new password (asked twice, not shown); ends the user's sessions.

    \b
    Example:
      funnel admin reset-password manager@clinic.example
    """
    admins.reset_password(app.db, email, _new_password(), app.now())
    click.echo(f"{email}: password changed; their sessions have ended")


@admin_group.command("totp-setup")
@click.argument("email")
@click.option("--qr", "qr_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the QR code to scan as an SVG file.")
@run
def admin_totp_setup(app: App, email: str, qr_out: Path | None) -> None:
    """Give a user a new second factor (TOTP); prints the key to type into an app.

    Scan the QR code (--qr) or type the key into an authenticator app; from
    then on the console asks for its 6-digit code at every sign-in.

    \b
    Example:
      funnel admin totp-setup manager@clinic.example --qr /tmp/totp.svg
    """
    import segno

    secret = admins.totp_setup(app.db, email, app.now())
    click.echo(f"{email}: second factor key {secret}")
    if qr_out is not None:
        segno.make(admins.totp_uri(secret, email), error="m").save(str(qr_out), kind="svg", scale=4)
        echo_err(f"wrote {qr_out}")


# --- campaign preview / test send, the events log ---


@campaign_group.command("preview")
@click.argument("campaign_id", type=int)
@click.option("--to", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the files (made if missing).")
@run
def campaign_preview(app: App, campaign_id: int, out_dir: Path) -> None:
    """Write a campaign as a sample reader gets it: HTML, text, .eml and a phone/desktop page.

    \b
    Example:
      funnel campaign preview 3 --to out/
    """
    for path in preview_campaign(app.db, app.settings, campaign_id, out_dir, app.now()):
        click.echo(f"wrote {path}")


@campaign_group.command("test")
@click.argument("campaign_id", type=int)
@click.option("--to", "to_addr", required=True, help="The address that gets the test message.")
@run
def campaign_test(app: App, campaign_id: int, to_addr: str) -> None:
    """Queue one test message of a campaign, subject marked "[Test]", to an address.

    It goes through the outbox like every message (`funnel send` or the worker
    delivers it) and does not count towards the campaign's progress.

    \b
    Example:
      funnel campaign test 3 --to manager@clinic.example
      funnel send
    """
    row = broadcasts.test_send(app.db, app.settings, campaign_id, to_addr, app.now())
    click.echo(f"campaign {campaign_id}: test message queued for {to_addr} (outbox row {row}); "
               "`funnel send` or the worker sends it")


@main.command("events")
@click.option("--since", default=None, help='A duration back from now ("24h", "7d") or a date.')
@click.option("--kind", default=None, help="Only events of this kind (e.g. sent, bounced, admin).")
@click.option("--limit", type=int, default=50, show_default=True, help="At most this many, newest first.")
@run
def events_cmd(app: App, since: str | None, kind: str | None, limit: int) -> None:
    """The events log, newest first: signups, sends, bounces, clicks, admin actions.

    \b
    Example:
      funnel events --since 24h
      funnel events --kind bounced --limit 20
      funnel events --since 2026-12-01 --kind admin
    """
    rows = events.recent(app.db, app.settings, app.now(), since=since, kind=kind, limit=limit)
    table = [("AT (UTC)", "KIND", "WHO", "REF", "DETAIL")]
    for e in rows:
        detail = " ".join(f"{k}={v}" for k, v in e.data.items())
        table.append((e.at[:19].replace("T", " "), e.kind, e.email or "-", e.ref or "-", detail[:60]))
    click.echo(_table(table) if rows else "no events")


@subscribers_group.command("history")
@click.argument("email")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="At most this many entries, newest first.")
@run
def subscribers_history(app: App, email: str, limit: int) -> None:
    """Everything that happened to one person, newest first: emails, clicks, webinars, changes.

    \b
    Example:
      funnel subscribers history ana@example.com
    """
    entries = history.timeline(app.db, email)[:limit]
    rows = [("AT (UTC)", "WHAT", "REF", "DETAIL")]
    for e in entries:
        what = f"email {e.status}" if e.kind == "email" else e.kind
        rows.append((e.at[:16].replace("T", " "), what, e.ref or "-", e.detail[:70]))
    click.echo(_table(rows) if entries else f"{email}: nothing recorded yet")


@subscribers_group.command("edit")
@click.argument("email")
@click.option("--name", default=None, help="The new name (\"\" to clear it).")
@click.option("--tz", default=None, help='The new time zone, e.g. Europe/London ("" = the clinic\'s).')
@run
def subscribers_edit(app: App, email: str, name: str | None, tz: str | None) -> None:
    """Change a person's name and/or time zone.

    \b
    Example:
      funnel subscribers edit ana@example.com --name "Ana Silva" --tz Europe/Lisbon
    """
    if name is None and tz is None:
        raise click.UsageError("give --name and/or --tz")
    sub = lifecycle.edit_profile(app.db, email, name=name, tz=tz, now=app.now())
    click.echo(f"{email}: name {sub.name!r}, time zone {sub.timezone or app.settings.timezone}")


@subscribers_group.command("unsuppress")
@click.argument("email")
@click.option("--reason", required=True, help="Why the address can be mailed again (logged).")
@run
def subscribers_unsuppress(app: App, email: str, reason: str) -> None:
    """Take a bounced address off the suppression list once it is fixed (complaints stay).

    \b
    Example:
      funnel subscribers unsuppress ana@example.com --reason "mailbox was full, reader emptied it"
    """
    sub = bounces.unsuppress(app.db, email, reason, "cli", app.now())
    click.echo(f"{email}: {sub.status} again; reason logged")
# --- feeds ---


@main.group("feed", cls=FunnelGroup)
def feed_group() -> None:
    """Watch a blog's feed: each new post becomes a draft broadcast to review.

    The worker checks each watch when it is due (conditional GET, so an
    unchanged feed costs little).  The first check only notes what the feed
    already holds; each later post becomes a draft (or one weekly digest
    draft).  Nothing is sent until you `funnel campaign schedule ID` it.

    \b
    Example:
      funnel feed watch https://clinic.example/feed/ --every 1h
      funnel feed list
    """


@feed_group.command("watch")
@click.argument("url")
@click.option("--every", default="1h", show_default=True, help="How often: 30m, 1h, 1d.")
@click.option("--digest", type=click.Choice(["none", "weekly"]), default="none", show_default=True,
              help="One draft per post, or one weekly digest draft.")
@click.option("--allow-private", is_flag=True,
              help="Allow a URL on a private or loopback address (refused by default).")
@run
def feed_watch(app: App, url: str, every: str, digest: str, allow_private: bool) -> None:
    """Watch the feed at URL for new posts (checked by `funnel worker`).

    \b
    Example:
      funnel feed watch https://clinic.example/feed/ --every 1h
      funnel feed watch https://clinic.example/feed/ --digest weekly
    """
    w = feeds.add_watch(app.db, url, app.now(), every=every, digest=digest,
                        allow_private=allow_private)
    click.echo(f"watching {w.url} (watch {w.id}, every {every}, digest {w.digest}); "
               f"the worker checks it next at {w.next_check_at:%Y-%m-%d %H:%M} UTC")


@feed_group.command("list")
@run
def feed_list(app: App) -> None:
    """List the watched feeds, when each was checked and what it produced.

    \b
    Example:
      funnel feed list
    """
    watches = feeds.list_watches(app.db)
    if not watches:
        click.echo("no feeds are watched; add one with `funnel feed watch URL`")
    for w in watches:
        checked = f"{w.last_checked_at:%Y-%m-%d %H:%M}" if w.last_checked_at else "never"
        click.echo(f"{w.id:>3}  {w.url}  every {w.every_seconds // 60} min, digest {w.digest}, "
                   f"checked {checked}, {w.seen} entries, {w.drafts} draft(s)"
                   + (f"; last error: {w.last_error}" if w.last_error else ""))


@feed_group.command("remove")
@click.argument("ref")
@run
def feed_remove(app: App, ref: str) -> None:
    """Stop watching a feed (by id or URL); drafts it made stay.

    \b
    Example:
      funnel feed remove 1
    """
    click.echo(f"no longer watching {feeds.remove_watch(app.db, ref)}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
