"""Appointment requests: the inbox, a request's page, its status changes, the CSV export.

The rules (which status may follow which, the notes, the export's columns)
live in campaigns/appointments.py, shared with ``funnel appointments``.
"""

from __future__ import annotations

import io

from flask import Blueprint, redirect, request, url_for

from campaigns import appointments
from funnel.db import APPOINTMENT_STATES
from funnel.errors import TransitionError

from .common import InputError, audit, db, download, now, render_admin

bp = Blueprint("appointments", __name__, url_prefix="/appointments")


def _status(value: str | None) -> str | None:
    return value if value else None


@bp.get("/")
def index():
    status = _status(request.args.get("status", ""))
    before = request.args.get("before", "")
    page = appointments.inbox(db(), status=status, before=int(before) if before.isdigit() else None)
    return render_admin("appointments.html.j2", page=page, shown=status or "",
                        statuses=APPOINTMENT_STATES, now=now(), age=appointments.age)


def _show(aid: int, error: str = "", status: int = 200):
    return render_admin("appointment.html.j2", status, d=appointments.detail(db(), aid), now=now(),
                        age=appointments.age, error=error, done=request.args.get("done", ""),
                        note=request.form.get("note", "") if error else "")


@bp.get("/<int:aid>")
def show(aid: int):
    return _show(aid)


@bp.post("/<int:aid>/status")
def change(aid: int):
    form = request.form
    target = form.get("status", "")
    try:
        a, changed = appointments.mark_seen(db(), aid, form.get("seen", ""), target, now(),
                                            form.get("note", "")[:2000])
    except (InputError, TransitionError) as exc:
        return _show(aid, str(exc), 400)
    if not changed:
        return redirect(url_for(".show", aid=aid, done=f"It was already {a.status}; nothing changed."), 303)
    audit("appointment_status", f"appointment {aid}", a.status)
    return redirect(url_for(".show", aid=aid, done=f"Marked {a.status}."), 303)


@bp.post("/export")
def export():
    status = _status(request.form.get("status", ""))
    out = io.StringIO()
    n = appointments.export_csv(db(), out, status=status)
    audit("export_appointments", status or "all", f"{n} request(s)")
    return download(out.getvalue(), f"appointments-{status or 'all'}.csv", "text/csv; charset=utf-8")
