"""The dashboard: the funnel chart, activity over 7 and 30 days, outbox health, check problems."""

from __future__ import annotations

from flask import Blueprint
from markupsafe import Markup

from campaigns.check import problems
from campaigns.dashboard import PERIODS, overview
from campaigns.report import chart_svg

from .common import db, now, render_admin, settings

bp = Blueprint("dashboard", __name__)


@bp.get("/")
def index():
    view = overview(db(), settings(), now())
    return render_admin(
        "dashboard.html.j2",
        view=view,
        periods=PERIODS,
        chart=Markup(chart_svg(view.funnel)),
        problems=problems(settings(), now(), network=False),
    )
