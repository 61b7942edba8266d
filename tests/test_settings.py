"""Settings: funnel.toml overridden by FUNNEL_* variables; one-line errors naming the setting."""

import pytest

from funnel.errors import SettingsError
from funnel.settings import DEV_SECRET_KEY, load_settings, parse_smtp_url

BASE = {"FUNNEL_SECRET_KEYS": "k" * 20}


def test_defaults_need_a_secret_outside_dev(tmp_path):
    with pytest.raises(SettingsError, match="^FUNNEL_SECRET_KEYS: no secret key"):
        load_settings({}, path=tmp_path / "none.toml")


def test_dev_mode_uses_the_public_dev_key(tmp_path):
    s = load_settings({"FUNNEL_DEV": "1"}, path=tmp_path / "none.toml")
    assert s.secret_keys == (DEV_SECRET_KEY,)
    with pytest.raises(SettingsError, match="FUNNEL_SECRET_KEYS: the public dev key"):
        load_settings({"FUNNEL_SECRET_KEYS": DEV_SECRET_KEY}, path=tmp_path / "none.toml")


def test_toml_then_environment(tmp_path):
    cfg = tmp_path / "funnel.toml"
    cfg.write_text(
        'site_name = "Spine Clinic"\nfrom = "hello@spine.example"\ntimezone = "America/New_York"\n'
        'secret_keys = ["new-key-0123456789", "old-key-0123456789"]\n'
        'smtp_url = ["smtp://relay.example:587?starttls=1", "smtps://u:p%40ss@relay2.example"]\n'
    )
    s = load_settings({"FUNNEL_TIMEZONE": "Europe/Paris", "FUNNEL_DB": "/tmp/x.db"}, path=cfg)
    assert s.site_name == "Spine Clinic"
    assert s.from_addr == "hello@spine.example"
    assert s.timezone == "Europe/Paris"  # the environment wins
    assert s.db == "/tmp/x.db"
    assert s.secret_keys == ("new-key-0123456789", "old-key-0123456789")
    r1, r2 = s.relays
    assert (r1.host, r1.port, r1.starttls, r1.tls) == ("relay.example", 587, True, False)
    assert (r2.host, r2.port, r2.tls, r2.username, r2.password) == ("relay2.example", 465, True, "u", "p@ss")


def test_secret_keys_from_env_are_comma_separated(tmp_path):
    s = load_settings({"FUNNEL_SECRET_KEYS": "newest-key-0123456, older-key-01234567"}, path=tmp_path / "x")
    assert s.secret_keys == ("newest-key-0123456", "older-key-01234567")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"FUNNEL_FROM": "not-an-address"}, "^FUNNEL_FROM: 'not-an-address' is not a valid email address"),
        ({"FUNNEL_BASE_URL": "clinic.example"}, "^FUNNEL_BASE_URL: .* must be an absolute"),
        ({"FUNNEL_SMTP_URL": "http://relay"}, "^FUNNEL_SMTP_URL: unknown scheme 'http'"),
        ({"FUNNEL_SMTP_URL": "smtp://relay?bogus=1"}, "^FUNNEL_SMTP_URL: unknown option 'bogus'"),
        ({"FUNNEL_TIMEZONE": "Mars/Olympus"}, "^FUNNEL_TIMEZONE: unknown time zone 'Mars/Olympus'"),
        ({"FUNNEL_POSTAL_ADDRESS": " "}, "^FUNNEL_POSTAL_ADDRESS: a postal address is required"),
        ({"FUNNEL_FREQUENCY_CAP": "lots"}, "^FUNNEL_FREQUENCY_CAP: expected a int"),
        ({"FUNNEL_FREQUENCY_CAP": "0"}, "^FUNNEL_FREQUENCY_CAP: must be greater than zero"),
        ({"FUNNEL_SECRET_KEYS": "short"}, "^FUNNEL_SECRET_KEYS: each key must be at least 16"),
        (
            {"FUNNEL_TRUSTED_PROXIES": "1", "FUNNEL_TRUSTED_PROXY_ADDRESS": "nginx"},
            "^FUNNEL_TRUSTED_PROXY_ADDRESS: 'nginx' is not an IP address",
        ),
        ({"FUNNEL_SERVER_THREADS": "0"}, "^FUNNEL_SERVER_THREADS: must be greater than zero"),
        ({"FUNNEL_SERVER_CONNECTION_LIMIT": "-5"}, "^FUNNEL_SERVER_CONNECTION_LIMIT: must be greater"),
        (
            {"FUNNEL_SERVER_CHANNEL_TIMEOUT": "5", "FUNNEL_SERVER_CLEANUP_INTERVAL": "10"},
            "^FUNNEL_SERVER_CLEANUP_INTERVAL: must not be longer than FUNNEL_SERVER_CHANNEL_TIMEOUT",
        ),
        ({"FUNNEL_HEALTHZ_WORKER_SECONDS": "-1"}, "^FUNNEL_HEALTHZ_WORKER_SECONDS: must not be negative"),
    ],
)
def test_invalid_settings_name_the_setting(tmp_path, env, message):
    with pytest.raises(SettingsError, match=message) as err:
        load_settings({**BASE, **env}, path=tmp_path / "none.toml")
    assert "\n" not in str(err.value)


def test_unknown_toml_key_and_bad_toml(tmp_path):
    cfg = tmp_path / "funnel.toml"
    cfg.write_text('sitename = "typo"\n')
    with pytest.raises(SettingsError, match="unknown setting 'sitename'"):
        load_settings(BASE, path=cfg)
    cfg.write_text("site_name = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(BASE, path=cfg)


def test_relay_rate_options():
    r = parse_smtp_url("smtp://mail.example:2525?rate=20&hourly=1000&daily=20000")
    assert (r.rate_per_second, r.max_per_hour, r.max_per_day) == (20.0, 1000, 20000)
