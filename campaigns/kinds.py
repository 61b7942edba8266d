"""Every message kind the outbox carries, and the builder that writes it.

One explicit table: sending (:func:`campaigns.messages.build`) and view in
browser (:mod:`campaigns.views`) both look a row's kind up here.  A new kind
is one import and one line below; nothing registers itself on import.

A builder is ``(db, settings, row, subscriber, now) -> Content`` (see
:mod:`campaigns.content`) and raises ``SkipMessage`` when the row must not go.
``DIRECT_BUILDERS`` write to an address that need not be a subscriber's
(``(db, settings, row, now) -> Direct``): transactional, no unsubscribe link,
no view in browser.
"""

from __future__ import annotations

from . import appointments, broadcasts, confirm, enrollment, webinars
from .content import Builder, DirectBuilder

BUILDERS: dict[str, Builder] = {
    "confirm": confirm.build_confirm,
    "broadcast": broadcasts.build_broadcast,
    broadcasts.TEST_KIND: broadcasts.build_test,
    "series": enrollment.build_series_step,
    "webinar_invite": webinars.build_invite,
    "webinar_verify": webinars.build_verify,
    "webinar_waitlist": webinars.build_waitlist,
    "webinar_confirm": webinars.build_confirm,
    "webinar_reminder": webinars.build_reminder,
    "webinar_update": webinars.build_update,
    "webinar_cancel": webinars.build_cancel,
    "webinar_followup": webinars.build_followup,
}

DIRECT_BUILDERS: dict[str, DirectBuilder] = {
    "appointment_clinic": appointments.build_clinic,
    "appointment_ack": appointments.build_ack,
}

#: Kinds sent to an address with no subscriber row (a stand-in reader is used).
WITHOUT_SUBSCRIBER = frozenset({broadcasts.TEST_KIND})
