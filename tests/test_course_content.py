"""The bundled 28-day programme: 28 daily steps that parse, progress week by week,
carry the medical note, end in the appointment button, ship in the wheel, and
copy no sentence from the clinic's scraped articles."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, seeds_dir

from campaigns.render import MEDICAL_NOTE, compile_email, sample_recipient
from campaigns.series import load_series
from funnel.errors import InputError

FOLDER = REPO / "content" / "series" / "28-day-programme"
SAFETY = "Stop if this makes your pain worse"


@pytest.fixture(scope="module")
def course():
    return load_series(FOLDER)


def test_28_daily_steps_in_order(course):
    assert course.slug == "28-day-programme"
    assert course.cadence_days == 1 and course.cadence_label == "daily"
    assert course.send_day is None and course.send_hour == 9
    assert course.stream == "series:28-day-programme"
    assert [s.part for s in course.steps] == list(range(1, 29))
    assert course.gaps == []
    for day, step in enumerate(course.steps, start=1):
        assert step.subject.startswith(f"Day {day}: "), step.path
        assert step.preheader and 120 <= step.words <= 260, (step.path, step.words)


def test_each_week_has_its_theme(course):
    """Week 1 mobility/breathing/walking, 2 activation, 3 strength, 4 habits."""
    text = [(s.title + " " + s.body_md).lower() for s in course.steps]
    week = [" ".join(text[i : i + 7]) for i in range(0, 28, 7)]
    assert all(w in week[0] for w in ("breath", "walk", "tilt"))
    assert all(w in week[1] for w in ("glute", "brace", "clamshell", "bird dog"))
    assert all(w in week[2] for w in ("strength", "plank", "hinge", "carry"))
    assert all(w in week[3] for w in ("habit", "sleep", "flare-up", "plan"))
    for day in (7, 14, 21):  # each week ends by putting it together
        assert "together" in course.steps[day - 1].subject.lower()


def test_every_day_has_the_medical_note_and_the_stop_rule(settings, course):
    for step in course.steps:
        assert SAFETY in " ".join(step.body_md.split()), step.path
        out = compile_email(
            settings, "series", subject=step.subject, preheader=step.preheader,
            body_md=step.body_md, ctas=step.ctas, extra={"part": step.part},
            strict=True,
        ).render(sample_recipient(settings))  # fmt: skip
        assert MEDICAL_NOTE in out.html
        assert MEDICAL_NOTE in " ".join(out.text.split())


def test_only_the_last_day_asks_for_an_appointment(course):
    assert [s.ctas for s in course.steps[:-1]] == [[]] * 27
    assert course.steps[-1].ctas == [{"kind": "appointment", "text": "Request an appointment"}]


def test_the_wheel_picks_up_every_file():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["content.series"]
    root = REPO / "content" / "series"
    files = [p.relative_to(root).as_posix() for p in FOLDER.iterdir()]
    assert len(files) == 29
    for name in files:
        assert any(fnmatch.fnmatch(name, pat) for pat in patterns), name


def test_an_unknown_cadence_names_the_file_and_line(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "01-a.md").write_text("---\ntitle: A\npart: 1\nsubject: A\n---\nBody.\n")
    (folder / "series.toml").write_text(
        'title = "Odd"\n\ncadence = "hourly"\nsteps = ["01-a.md"]\n', encoding="utf-8"
    )
    with pytest.raises(InputError, match=rf"^{re.escape(str(folder / 'series.toml'))}:3: "
                                         r"'cadence' 'hourly' is not understood"):  # fmt: skip
        load_series(folder)


# ----------------------------------------------------------------- our own words
def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower().replace("\u2019", "'"))


def _shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = _words(text)
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def test_no_sentence_comes_from_the_seeds(course):
    seeds: set[tuple[str, ...]] = set()
    for path in sorted(Path(seeds_dir()).rglob("*")):
        if path.is_file():
            seeds |= _shingles(path.read_text(encoding="utf-8", errors="ignore"))
    assert seeds, "the seed folder is empty"
    for step in course.steps:
        copied = _shingles(step.title + "\n" + step.subject + "\n" + step.body_md) & seeds
        assert not copied, f"{step.path.name}: {' '.join(sorted(copied)[0])!r}"
