"""The console's series screen: steps with previews, a zone's timeline, diff before apply."""

# ruff: noqa: F811
from __future__ import annotations

import html

from admin_support import (  # noqa: F401 (fixtures)
    admin_user,
    console,
    fast_hash,
    signed_in,
)

from campaigns import enrollment
from campaigns.series import find_series

SLUG = "importance-of-exercise"


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def test_series_list_and_steps_with_a_zone_timeline(signed_in, settings):
    series = find_series(settings.content_paths, SLUG)
    assert series.title in text(signed_in.get("/admin/series/"))
    r = signed_in.get(f"/admin/series/{SLUG}?tz=Asia/Tokyo&start=2027-03-01 10:00")
    page = text(r)
    assert r.status_code == 200
    assert "A reader in Asia/Tokyo who confirms Mon 2027-03-01 10:00 JST" in page
    for step in series.steps:
        assert step.subject in page
    assert page.count(" JST</td>") == len(series.steps)
    r = signed_in.get(f"/admin/series/{SLUG}?tz=Mars/Olympus")
    assert r.status_code == 400 and "Mars/Olympus" in text(r)


def test_step_preview_is_the_rendered_email(signed_in, settings):
    step = find_series(settings.content_paths, SLUG).steps[1]
    r = signed_in.get(f"/admin/series/{SLUG}/{step.key}/preview")
    assert r.status_code == 200 and "'unsafe-inline'" in r.headers["Content-Security-Policy"]
    page = text(r)
    assert 'width="375"' in page and step.subject.replace("{{ first_name }}", "Alex") in page


def test_diff_is_shown_before_apply_and_apply_is_recorded(signed_in, db, settings):
    page = text(signed_in.get(f"/admin/series/{SLUG}"))
    assert "Never applied" in page and 'id="apply"' in page
    token = signed_in.token(f"/admin/series/{SLUG}")
    r = signed_in.post(f"/admin/series/{SLUG}/apply", token=token)
    assert r.status_code == 303 and "version+1+applied" in r.headers["Location"].replace("%20", "+")
    assert enrollment.applied_version(db, SLUG).number == 1
    page = text(signed_in.get(f"/admin/series/{SLUG}"))
    assert "matches the content: nothing to apply" in page and 'id="apply"' not in page
    (n,) = db.execute("SELECT COUNT(*) FROM events WHERE kind = 'admin' AND ref = 'series_apply'").fetchone()
    assert n == 1
