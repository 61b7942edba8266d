"""The delivery policy file: shipped values, and a bad file named in one line."""

from datetime import timedelta

import pytest

from campaigns import holds, smtp, webinars
from funnel import outbox
from funnel.errors import FunnelError
from funnel.policy import POLICY_PATH, load, policy
from subscribers import bounces


@pytest.mark.parametrize(
    "code, stage, verdict",
    [
        (None, "connect", "retry"),
        (250, "data", "sent"),
        (421, "connect", "slowdown"),
        (450, "rcpt", "retry"),
        (552, "rcpt", "retry"),
        (552, "data", "failed"),
        (550, "connect", "relay"),
        (530, "mail", "relay"),
        (550, "rcpt", "failed"),
        (554, "data", "failed"),
        (354, "data", "retry"),
    ],
)
def test_shipped_reply_code_policy(code, stage, verdict):
    assert smtp.classify(code, stage) == verdict


def test_shipped_windows_and_reminders():
    assert holds.CAP_WINDOW == holds.WEBINAR_HOLD == timedelta(hours=24)
    assert webinars.DEFAULT_REMINDERS == (1440, 60, 10)
    assert policy() is policy()  # read once
    assert (outbox.PRIORITY_TRANSACTIONAL, outbox.PRIORITY_WEBINAR, outbox.PRIORITY_BROADCAST,
            outbox.PRIORITY_SERIES) == (0, 10, 30, 50)
    assert bounces.WEIGHTS == {"hard": 1.0, "soft": 0.5}


def test_a_changed_policy_file_changes_the_verdict(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(
        POLICY_PATH.read_text(encoding="utf-8").replace(
            '{ codes = [421, 421], verdict = "slowdown" }', '{ codes = [421, 421], verdict = "relay" }'
        ),
        encoding="utf-8",
    )
    assert load(path).verdict(421, "connect") == "relay"


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('verdict = "failed" }', 'verdict = "bounce" }', r"\[reply_codes\] rule 6: verdict 'bounce'"),
        ("codes = [400, 499]", "codes = [499, 400]", r"\[reply_codes\] rule 3: 'codes' must be"),
        ("webinar_hold_hours = 24", "webinar_hold_hours = -1", r"\[holds\]: 'webinar_hold_hours'"),
        ("[webinars]", "[webinar]", r"the delivery policy lacks 'webinars'"),
        ("series = 50", "series = 5.5", r"\[priorities\]: 'series' must be a number >= 0 \(a whole"),
        ("soft = 0.5", "soft = -1", r"\[bounces\]: 'soft' must be a number >= 0"),
        ("hard = 1.0", "firm = 1.0", r"\[bounces\]: needs exactly the keys hard, soft"),
    ],
)
def test_a_bad_policy_file_is_named_in_one_line(tmp_path, old, new, message):
    path = tmp_path / "policy.toml"
    text = POLICY_PATH.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(FunnelError, match=message) as exc:
        load(path)
    assert str(path) in str(exc.value) and "\n" not in str(exc.value)
