"""People: search and filter, a person's page and timeline, the actions on them, CSV import."""

from __future__ import annotations

from flask import Blueprint, redirect, request, url_for

from campaigns import views
from funnel.db import SUBSCRIBER_STATES
from subscribers import bounces, history, io, lifecycle, people

from .common import (
    EMAIL_CSP_ANCESTORS,
    UPLOAD_MARGIN,
    InputError,
    audit,
    client_ip,
    confirm_typed,
    current_admin,
    db,
    download,
    email_response,
    now,
    render_admin,
    settings,
    zones,
)

bp = Blueprint("people", __name__, url_prefix="/people")


def _filters() -> people.Filters:
    a = request.args
    step = a.get("step", "").strip()
    if step and not step.isdigit():
        raise InputError(f"step: {step!r} is not a number")
    return people.Filters(
        q=a.get("q", "")[:200], status=a.get("status", ""), stream=a.get("stream", "")[:200],
        series=a.get("series", "")[:200], step=int(step) if step else None,
        segment=a.get("segment", "")[:500],
    )


@bp.get("/")
def index():
    filters = _filters()
    before = request.args.get("before", "")
    found = people.search(db(), settings(), filters, now(),
                          before=int(before) if before.isdigit() else None)
    query = {k: v for k, v in request.args.items() if k != "before" and v}
    return render_admin("people.html.j2", filters=filters, page=found, query=query,
                        statuses=SUBSCRIBER_STATES)


def _back(sid: int, message: str = ""):
    return redirect(url_for("admin.people.show", sid=sid, done=message or None), 303)


@bp.get("/<int:sid>")
def show(sid: int):
    person = people.person(db(), sid)
    return render_admin("person.html.j2", person=person, sub=person.subscriber,
                        timeline=history.entries(db(), sid), zones=zones(),
                        done=request.args.get("done", ""))


@bp.get("/<int:sid>/messages/<int:row_id>")
def message(sid: int, row_id: int):
    shown = views.show(db(), settings(), sid, row_id, now())
    return email_response(shown.rendered.html, ancestors=EMAIL_CSP_ANCESTORS)


@bp.post("/<int:sid>/resend")
def resend(sid: int):
    result = people.resend_confirmation(db(), settings(), sid, now())
    audit("resend_confirmation", f"subscriber {sid}", result, subscriber_id=sid)
    return _back(sid, "Confirmation sent again." if result != "throttled" else
                 "A confirmation went out recently; nothing more was sent.")


@bp.post("/<int:sid>/edit")
def edit(sid: int):
    sub = lifecycle.get(db(), sid)
    lifecycle.edit_profile(db(), sub.email or "", name=request.form.get("name", "")[:300],
                           tz=request.form.get("timezone", "")[:64], now=now())
    audit("edit_profile", f"subscriber {sid}", subscriber_id=sid)
    return _back(sid, "Details saved.")


@bp.post("/<int:sid>/unsubscribe")
def unsubscribe(sid: int):
    stream = request.form.get("stream", "").strip()[:200] or None
    lifecycle.unsubscribe(db(), sid, now(), stream=stream, source="admin")
    audit("unsubscribe", f"subscriber {sid}", stream or "everything", subscriber_id=sid)
    return _back(sid, f"Unsubscribed from {stream or 'everything'}.")


@bp.post("/<int:sid>/unsuppress")
def unsuppress(sid: int):
    sub = lifecycle.get(db(), sid)
    bounces.unsuppress(db(), sub.email or "", request.form.get("reason", ""),
                       current_admin().email, now(), ip=client_ip())
    return _back(sid, "The address can be mailed again.")


@bp.post("/<int:sid>/export")
def export(sid: int):
    body = people.export_json(db(), sid)
    audit("export", f"subscriber {sid}", subscriber_id=sid)
    return download(body, f"subscriber-{sid}.json", "application/json")


@bp.post("/<int:sid>/erase")
def erase(sid: int):
    sub = lifecycle.get(db(), sid)
    confirm_typed(sub.email or "")
    io.erase(db(), sub.email, now())
    audit("erase", f"subscriber {sid}", subscriber_id=sid)
    return _back(sid, "Erased: only a hash of the address is kept, on the suppression list.")


# ----------------------------------------------------------------- import
@bp.get("/import")
def import_form():
    return render_admin("import.html.j2", preview=None, token="", filename="")


@bp.post("/import")
def import_preview():
    request.max_content_length = people.UPLOAD_LIMIT + UPLOAD_MARGIN
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise InputError("file: choose a CSV file to upload")
    filename = upload.filename.replace("/", "_")[-100:]
    token = people.stage_upload(settings(), upload.stream, filename, now())
    preview = people.preview_upload(settings(), token, filename)
    return render_admin("import.html.j2", preview=preview, token=token, filename=filename)


@bp.post("/import/commit")
def import_commit():
    form = request.form
    filename = form.get("filename", "upload.csv")[:100]
    report = people.import_upload(
        db(), settings(), form.get("token", ""), filename, now(),
        pre_confirmed=form.get("pre_confirmed") == "yes", consent_note=form.get("consent_note", "")[:300],
    )
    audit("import", filename, f"{report.imported} imported, {report.already_present} already present")
    return render_admin("import_done.html.j2", report=report)
