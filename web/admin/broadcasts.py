"""Broadcasts: list, compose with a live preview, test send, schedule, pause, resume, cancel.

Compose takes an optional subject B (an A/B test, campaigns/broadcasts.py);
the campaign's page shows its variants and decision, and the campaign's
clicks (human, scanner, per link), in the progress fragment htmx polls.

The preview is the real rendered email (campaigns/preview.py) at phone and
desktop width, served as its own sandboxed document (the email CSP: inline
styles, no scripts) into an iframe; the compose form's Preview button posts
to it and admin-compose.js presses that button as the writer types.
"""

from __future__ import annotations

import secrets

from flask import Blueprint, redirect, request, url_for

from campaigns import broadcasts, merge_tags, preview
from subscribers import segments

from .common import (
    FunnelError,
    audit,
    confirm_typed,
    current_admin,
    db,
    email_response,
    now,
    render_admin,
    settings,
)

bp = Blueprint("broadcasts", __name__, url_prefix="/broadcasts")

#: The compose form's fields and their defaults.
FIELDS = {"subject": "", "preheader": "", "body": "", "segment": "all", "where": "",
          "subject_b": "", "test_share": "20%", "decide_after": "4h"}
#: How errors name them: the form's labels.
NAMES = {"subject": "Subject", "preheader": "Preheader", "body": "Message",
         "subject_b": "Subject B", "test_share": "Test share", "decide_after": "Decide after"}


def _wheres(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _draft(values: dict) -> dict:
    """The compose form's values as keyword arguments of create and update_draft."""
    ab = bool(values["subject_b"].strip())
    return {
        "subject": values["subject"], "preheader": values["preheader"],
        "body_md": values["body"].replace("\r\n", "\n"), "segment": values["segment"],
        "where": _wheres(values["where"]), "names": NAMES,
        "ab_subjects": (values["subject_b"],) if ab else (),
        "test_share": values["test_share"] if ab else None,
        "decide_after": values["decide_after"] if ab else None,
    }  # fmt: skip


def _compose(values: dict, error: str | None = None, status: int = 200,
             campaign_id: int | None = None):
    action = (url_for(".edit_post", campaign_id=campaign_id) if campaign_id
              else url_for(".create"))
    return render_admin(
        "broadcast_compose.html.j2", status, values=values, error=error, action=action,
        campaign_id=campaign_id,
        segment_names=sorted(segments.load_definitions(settings())),
        tags=merge_tags.ALLOWED,
    )  # fmt: skip


@bp.get("/")
def index():
    return render_admin("broadcasts.html.j2", rows=broadcasts.listing(db(), limit=200))


@bp.get("/new")
def new():
    return _compose({**FIELDS, "nonce": secrets.token_urlsafe(16)})


@bp.post("/new")
def create():
    values = {k: request.form.get(k, d) for k, d in FIELDS.items()}
    values["nonce"] = request.form.get("nonce", "")[:64]
    try:
        cid = broadcasts.create(db(), settings(), now(), form_nonce=values["nonce"] or None,
                                **_draft(values))
    except FunnelError as exc:
        return _compose(values, str(exc), 400)
    audit("broadcast_create", f"campaign {cid}", values["subject"])
    return redirect(url_for(".show", campaign_id=cid), 303)


@bp.get("/<int:campaign_id>/edit")
def edit(campaign_id: int):
    c, ab = broadcasts.get_with_ab(db(), campaign_id)
    values = {**FIELDS, "subject": c.subject, "preheader": c.preheader, "body": c.body_md,
              "segment": c.segment, "where": "\n".join(c.where), "nonce": ""}
    if ab:
        values.update(subject_b=ab.subject_b, test_share=f"{ab.test_share * 100:g}%",
                      decide_after=_wait(ab.decide_after_seconds))
    return _compose(values, campaign_id=campaign_id)


def _wait(seconds: int) -> str:
    """A stored wait as the form writes it: 4h, 90m, 1d."""
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}m"


@bp.post("/<int:campaign_id>/edit")
def edit_post(campaign_id: int):
    values = {k: request.form.get(k, d) for k, d in FIELDS.items()}
    try:
        broadcasts.update_draft(db(), settings(), campaign_id, now(), **_draft(values))
    except FunnelError as exc:
        return _compose({**values, "nonce": ""}, str(exc), 400, campaign_id)
    audit("broadcast_edit", f"campaign {campaign_id}", values["subject"])
    return _back(campaign_id, "saved")


@bp.post("/preview")
def preview_draft():
    form = request.form
    try:
        shown = preview.render_broadcast(
            settings(), now(), subject=form.get("subject", ""), preheader=form.get("preheader", ""),
            body_md=form.get("body", "").replace("\r\n", "\n") or " ",
        )  # fmt: skip
    except FunnelError as exc:
        return _framed(preview.problem_page(str(exc)))
    return _framed(shown.page)


@bp.get("/count")
def count():
    try:
        n = segments.count(db(), settings(), request.args.get("segment", "all"),
                           where=_wheres(request.args.get("where", "")), now=now(),
                           stream="broadcasts")
    except FunnelError as exc:
        return render_admin("broadcast_count.html.j2", error=str(exc), n=None)
    return render_admin("broadcast_count.html.j2", error=None, n=n)


@bp.get("/<int:campaign_id>")
def show(campaign_id: int):
    st = broadcasts.status(db(), settings(), campaign_id, now())
    return render_admin("broadcast.html.j2", st=st, c=st.campaign, done=request.args.get("done"),
                        states=PROGRESS_STATES)


PROGRESS_STATES = ("queued", "sending", "retry", "sent", "failed", "suppressed", "expired",
                   "cancelled")


@bp.get("/<int:campaign_id>/progress")
def progress(campaign_id: int):
    st = broadcasts.status(db(), settings(), campaign_id, now())
    return render_admin("broadcast_progress.html.j2", st=st, c=st.campaign, states=PROGRESS_STATES)


@bp.get("/<int:campaign_id>/preview")
def preview_saved(campaign_id: int):
    return _framed(preview.render_campaign(db(), settings(), campaign_id, now()).page)


@bp.post("/<int:campaign_id>/test")
def test(campaign_id: int):
    admin = current_admin()
    broadcasts.test_send(db(), settings(), campaign_id, admin.email, now())
    audit("broadcast_test", f"campaign {campaign_id}", admin.email)
    return _back(campaign_id, "test")


@bp.post("/<int:campaign_id>/schedule")
def schedule(campaign_id: int):
    form = request.form
    zone = form.get("zone", "clinic")
    send_now = form.get("action") == "now"
    c = broadcasts.schedule_campaign(
        db(), settings(), campaign_id, now(), at=None if send_now else form.get("when", ""),
        tz="UTC" if zone == "utc" else None, local=zone == "local", send_now=send_now,
        from_draft=True,
    )  # fmt: skip
    audit("broadcast_schedule", f"campaign {campaign_id}", c.local_at or c.send_at)
    return _back(campaign_id, "scheduled")


@bp.post("/<int:campaign_id>/pause")
def pause(campaign_id: int):
    broadcasts.pause(db(), campaign_id, now())
    audit("broadcast_pause", f"campaign {campaign_id}")
    return _back(campaign_id, "paused")


@bp.post("/<int:campaign_id>/resume")
def resume(campaign_id: int):
    broadcasts.resume(db(), campaign_id, now())
    audit("broadcast_resume", f"campaign {campaign_id}")
    return _back(campaign_id, "resumed")


@bp.post("/<int:campaign_id>/cancel")
def cancel(campaign_id: int):
    confirm_typed(broadcasts.get(db(), campaign_id).subject)
    _c, n = broadcasts.cancel(db(), campaign_id, now())
    audit("broadcast_cancel", f"campaign {campaign_id}", f"{n} unsent message(s) cancelled")
    return _back(campaign_id, "cancelled")


def _back(campaign_id: int, done: str):
    return redirect(url_for(".show", campaign_id=campaign_id, done=done), 303)


def _framed(html: str):
    """An email preview document, framed by the console only, with the email CSP."""
    response = email_response(html, ancestors="'self'")
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
