"""Webinars: list, create, edit (reschedule), cancel; registrants and waitlist;
the attendance upload; invite a segment; the follow-ups and the rest of its mail."""

from __future__ import annotations

from flask import Blueprint, redirect, request, url_for

from campaigns import attendance, webinars

from .common import (
    UPLOAD_MARGIN,
    InputError,
    audit,
    confirm_typed,
    db,
    now,
    render_admin,
    settings,
)

bp = Blueprint("webinars", __name__, url_prefix="/webinars")

#: The form fields create and edit take (the domain's keys), with their labels in errors.
FIELDS = {
    "title": "Title",
    "description": "Description",
    "start": "Start",
    "timezone": "Time zone",
    "duration_minutes": "Length (minutes)",
    "join_url": "Join link",
    "replay_url": "Replay link",
    "capacity": "Seats",
    "host_name": "Host",
}


def _field(key: str) -> str:
    return FIELDS.get(key, key.replace("_", " ").capitalize())


def _values(form, keys) -> dict:
    """The submitted fields; an empty one is 'not given' (None)."""
    return {k: (form.get(k, "").strip() or None) for k in keys}


@bp.get("/")
def index():
    return render_admin("webinars.html.j2", rows=webinars.list_webinars(db()), fields=FIELDS,
                        tz=settings().timezone)


@bp.post("/")
def create():
    values = {"slug": request.form.get("slug", "").strip(), **_values(request.form, FIELDS)}
    w = webinars.create_webinar(db(), settings(), values, now(), where=_field)
    audit("webinar_create", w.ref, w.title)
    return redirect(url_for(".show", slug=w.slug), 303)


@bp.get("/<slug>")
def show(slug: str):
    view = webinars.overview(db(), slug)
    return render_admin("webinar.html.j2", view=view, w=view.webinar, fields=FIELDS,
                        done=request.args.get("done"))


@bp.post("/<slug>/edit")
def edit(slug: str):
    result = webinars.edit_webinar(db(), settings(), slug, _values(request.form, FIELDS), now(),
                                   where=_field)
    audit("webinar_edit", result.webinar.ref, ", ".join(result.changed) or "nothing changed")
    done = f"rescheduled: {result.updates_queued} update(s) queued" if result.rescheduled else "saved"
    return _back(slug, done)


@bp.post("/<slug>/cancel")
def cancel(slug: str):
    confirm_typed(webinars.get_webinar(db(), slug).title)
    result = webinars.cancel_webinar(db(), settings(), slug, now())
    audit("webinar_cancel", result.webinar.ref, f"{result.notices_queued} notice(s) queued")
    return _back(slug, f"cancelled: {result.notices_queued} notice(s) queued")


@bp.post("/<slug>/invite")
def invite(slug: str):
    form = request.form
    where = tuple(x.strip() for x in form.get("where", "").splitlines() if x.strip())
    result = webinars.invite(db(), settings(), slug, form.get("segment", "all").strip() or "all",
                             now(), where=where)
    audit("webinar_invite", result.webinar.ref, f"{result.queued} queued")
    return _back(slug, f"invited: {result.queued} queued, {result.already} already invited or "
                       "not on the webinars stream")


@bp.post("/<slug>/attendance")
def upload_attendance(slug: str):
    request.max_content_length = attendance.UPLOAD_LIMIT + UPLOAD_MARGIN
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise InputError("file: choose the attendance CSV to upload")
    filename = upload.filename.replace("/", "_")[-100:]
    report = attendance.import_upload(db(), settings(), slug, upload.stream, filename, now(),
                                      skip_invalid=request.form.get("skip_invalid") == "yes")
    audit("webinar_attendance", f"webinar:{slug}", f"{filename}: {report.attended} attended, "
                                                    f"{report.no_show} no-show")
    return render_admin("webinar_attendance.html.j2", report=report, slug=slug, filename=filename)


def _back(slug: str, done: str):
    return redirect(url_for(".show", slug=slug, done=done), 303)
