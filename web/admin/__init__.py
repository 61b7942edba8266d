"""The admin console under /admin: one parent blueprint, one nested blueprint per screen.

Every request to a nested blueprint passes :func:`web.admin.common.guard`
first (address allowlist, https outside dev mode, a live session, CSRF bound
to the session on every POST), so a screen only parses input, calls one
domain function and renders the answer with ``render_admin``.  A screen's
blueprint is named after its nav entry and has an ``index`` view
(``admin.people.index``); the nav in ``base.html.j2`` shows the entries whose
blueprint is registered.
"""

from __future__ import annotations

from flask import Blueprint

from . import appointments, auth, broadcasts, common, config, dashboard, people, series, webinars

admin_bp = Blueprint("admin", __name__, url_prefix="/admin")
admin_bp.before_request(common.guard)
admin_bp.context_processor(common.template_values)
admin_bp.register_error_handler(common.FunnelError, common.funnel_error)
admin_bp.register_error_handler(common.NotFound, common.funnel_error)
admin_bp.register_error_handler(413, common.too_large)
admin_bp.register_blueprint(auth.bp)
admin_bp.register_blueprint(dashboard.bp)
admin_bp.register_blueprint(people.bp)
admin_bp.register_blueprint(config.bp)
admin_bp.register_blueprint(broadcasts.bp)
admin_bp.register_blueprint(series.bp)
admin_bp.register_blueprint(webinars.bp)
admin_bp.register_blueprint(appointments.bp)

__all__ = ["admin_bp"]
