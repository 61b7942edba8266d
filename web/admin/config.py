"""Settings: the effective settings (read-only, secrets hidden) and the `funnel check` result."""

from __future__ import annotations

from flask import Blueprint

from campaigns.check import problems
from funnel.settings import config_path, effective

from .common import now, render_admin, settings

bp = Blueprint("settings", __name__, url_prefix="/settings")


@bp.get("/")
def index():
    return render_admin("settings.html.j2", rows=effective(settings()), source=str(config_path()),
                        problems=problems(settings(), now(), network=False))
