"""The delivery policy (``funnel/policy.toml``), read once per process.

Policy is data: how SMTP reply codes are treated, the hold windows, the
default webinar reminders, the outbox priorities and the bounce weights live in the TOML file beside this module, so they
can be read and changed without reading code.  :func:`policy` parses and
checks the file on first use and caches the result.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from pathlib import Path

from funnel.errors import FunnelError

POLICY_PATH = Path(__file__).with_name("policy.toml")
VERDICTS = ("sent", "retry", "slowdown", "relay", "failed")
STAGES = ("connect", "mail", "rcpt", "data")


@dataclass(frozen=True)
class ReplyRule:
    low: int
    high: int
    stages: tuple[str, ...]  # empty: any stage
    verdict: str


@dataclass(frozen=True)
class Policy:
    reply_rules: tuple[ReplyRule, ...]
    no_answer: str
    otherwise: str
    cap_window: timedelta
    webinar_hold: timedelta
    reminder_offsets: tuple[int, ...]
    priorities: dict[str, int]  # outbox claim order by mail class, lower first
    bounce_weights: dict[str, float]  # what one hard / soft bounce adds to the score

    def verdict(self, code: int | None, stage: str) -> str:
        """The sender's verdict on an SMTP reply ``code`` given at ``stage``."""
        if code is None:
            return self.no_answer
        for rule in self.reply_rules:
            if rule.low <= code <= rule.high and (not rule.stages or stage in rule.stages):
                return rule.verdict
        return self.otherwise


def _verdict(value: object, where: str) -> str:
    if value not in VERDICTS:
        raise FunnelError(f"{where}: verdict {value!r} is not one of {', '.join(VERDICTS)}")
    return str(value)


def _rule(raw: object, where: str) -> ReplyRule:
    if not isinstance(raw, dict) or set(raw) - {"codes", "stage", "verdict"}:
        raise FunnelError(f"{where}: a rule has only 'codes', 'stage' and 'verdict'")
    codes = raw.get("codes")
    if (not isinstance(codes, list) or len(codes) != 2
            or not all(isinstance(c, int) and 100 <= c <= 599 for c in codes) or codes[0] > codes[1]):
        raise FunnelError(f"{where}: 'codes' must be [low, high] SMTP codes, e.g. [500, 599]")
    stages = raw.get("stage", [])
    if not isinstance(stages, list) or any(s not in STAGES for s in stages):
        raise FunnelError(f"{where}: 'stage' must be a list of {', '.join(STAGES)}")
    return ReplyRule(codes[0], codes[1], tuple(stages), _verdict(raw.get("verdict"), where))


def _hours(table: dict, key: str, where: str) -> timedelta:
    value = table.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FunnelError(f"{where}: '{key}' must be a whole number of hours")
    return timedelta(hours=value)


def _numbers(table: object, keys: tuple[str, ...], kind: type, where: str) -> dict:
    if not isinstance(table, dict) or set(table) != set(keys):
        raise FunnelError(f"{where}: needs exactly the keys {', '.join(keys)}")
    for key, value in table.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
                kind is int and not isinstance(value, int)):
            raise FunnelError(f"{where}: {key!r} must be a number >= 0"
                              + (" (a whole number)" if kind is int else ""))
    return {k: kind(table[k]) for k in keys}


def load(path: Path) -> Policy:
    """Parse and check a policy file; a FunnelError names the file, table and key."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FunnelError(f"{path}: cannot read the delivery policy ({exc})") from exc
    try:
        codes, holds, webinars = data["reply_codes"], data["holds"], data["webinars"]
        rules = codes["rules"]
        offsets = webinars["reminder_offsets_minutes"]
        priorities, bounces = data["priorities"], data["bounces"]
    except (KeyError, TypeError) as exc:
        raise FunnelError(f"{path}: the delivery policy lacks {exc}") from exc
    if not isinstance(offsets, list) or not all(isinstance(m, int) and m > 0 for m in offsets):
        raise FunnelError(f"{path}: [webinars] 'reminder_offsets_minutes' must be minutes > 0")
    return Policy(
        reply_rules=tuple(_rule(r, f"{path}: [reply_codes] rule {i}") for i, r in enumerate(rules, 1)),
        no_answer=_verdict(codes.get("no_answer"), f"{path}: [reply_codes] no_answer"),
        otherwise=_verdict(codes.get("otherwise"), f"{path}: [reply_codes] otherwise"),
        cap_window=_hours(holds, "frequency_cap_window_hours", f"{path}: [holds]"),
        webinar_hold=_hours(holds, "webinar_hold_hours", f"{path}: [holds]"),
        reminder_offsets=tuple(offsets),
        priorities=_numbers(priorities, ("transactional", "webinar", "broadcast", "series"), int,
                            f"{path}: [priorities]"),
        bounce_weights=_numbers(bounces, ("hard", "soft"), float, f"{path}: [bounces]"),
    )


@cache
def policy() -> Policy:
    """The shipped delivery policy, read on first use."""
    return load(POLICY_PATH)
