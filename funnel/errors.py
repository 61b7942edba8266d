"""Errors a person can act on.

Every domain function raises :class:`FunnelError` (or a subclass) with one
sentence that names the field, file:line or setting at fault.  The doors turn
these into a one-line message (CLI) or a friendly page (web); nothing else is
shown to the user.
"""


class FunnelError(Exception):
    """A problem the user can fix; ``str(err)`` is one actionable sentence."""


class SettingsError(FunnelError):
    """A missing or invalid setting; the message names the setting."""


class ConfigurationError(FunnelError):
    """A message cannot be built because of a setting, template or content problem.

    Not the recipient's fault: the outbox row stays queued ("held") with the
    reason until the configuration changes, instead of failing.
    """


class InputError(FunnelError):
    """Bad input: a CSV row, a form field, front matter or a CLI option."""


class RowsRejected(InputError):
    """A file had bad rows and skip_invalid was off: nothing was stored.

    ``report`` is the import's report (it has ``path`` and ``problems``, each
    problem a ``file:line: reason``); the CSV import and the attendance import
    both raise it.
    """

    def __init__(self, report):
        self.report = report
        n = len(report.problems)
        super().__init__(
            f"{report.path}: {n} bad row{'s' if n != 1 else ''}, nothing was imported "
            f"(first: {report.problems[0]}); fix them or pass --skip-invalid"
        )


class TransitionError(FunnelError):
    """An illegal subscriber, subscription or outbox state change."""


class TokenError(FunnelError):
    """A link token that is expired, tampered with, replayed or for another purpose."""


class NotFound(FunnelError):
    """The thing asked for does not exist."""


class DatabaseError(FunnelError):
    """The database file cannot be used (locked, read-only, missing)."""
