"""Series: each series' steps with previews, a new reader's timeline in a chosen zone,
and the structural changes (``series diff``) to look at before ``apply``."""

from __future__ import annotations

from flask import Blueprint, redirect, request, url_for

from campaigns import enrollment, preview
from campaigns.series import list_series

from .common import audit, db, email_response, now, render_admin, settings

bp = Blueprint("series", __name__, url_prefix="/series")


@bp.get("/")
def index():
    return render_admin("series_list.html.j2", rows=list_series(settings().content_paths))


@bp.get("/<slug>")
def show(slug: str):
    tz = request.args.get("tz", "").strip() or None
    start = request.args.get("start", "").strip() or None
    view = enrollment.overview(db(), settings(), slug, now(), tz=tz, start=start)
    return render_admin("series.html.j2", view=view, series=view.series, tz=tz or "",
                        start=start or "", done=request.args.get("done"))


@bp.get("/<slug>/<key>/preview")
def step_preview(slug: str, key: str):
    response = email_response(preview.render_step(settings(), slug, key, now()).page, "'self'")
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


@bp.post("/<slug>/apply")
def apply(slug: str):
    number, changed = enrollment.apply_version(db(), enrollment.load(settings(), slug), now())
    audit("series_apply", f"series:{slug}", f"version {number}" if changed else "already applied")
    done = f"version {number} applied" if changed else f"version {number} was already applied"
    return redirect(url_for(".show", slug=slug, done=done), 303)
