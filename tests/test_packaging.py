"""The distribution as a user gets it: a wheel installed outside the checkout.

An editable install finds templates and content in the checkout, so it hides
a wheel that forgot them.  This test builds the wheel from a copy of the
sources, installs it into a fresh venv in a temp folder, and runs the
installed ``funnel`` from a temp working directory.

Offline: the wheel is built without build isolation (the test extras bring
setuptools>=77), and the fresh venv gets no pip and no downloads.  The wheel is
installed with the running interpreter's pip (``pip --python``), and the
dependencies come from the running environment's site-packages, added to the
new venv as a plain path (a ``.pth`` line), which does not run that
environment's editable-install hooks, so ``funnel`` itself can only come from
the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from funnel.settings import load_settings, write_dev_config

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "cli.py",
           "funnel", "campaigns", "subscribers", "web", "templates", "content"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FUNNEL_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wheel_build(tmp_path_factory) -> tuple[Path, str]:
    """(the wheel, the build log) from a copy of the sources."""
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: the test extras bring setuptools>=77, so nothing is downloaded.
    done = _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                 "--no-index", "-v", "-w", str(dist)], src, _clean_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = dist.glob("funnel-*.whl")
    return wheel, done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(wheel_build, tmp_path_factory) -> Path:
    """A fresh venv outside the checkout with the wheel installed; returns its bin/."""
    wheel, _ = wheel_build
    venv = tmp_path_factory.mktemp("venv")
    done = _run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], venv, _clean_env())
    assert done.returncode == 0, done.stderr
    bin_dir = venv / "bin"
    py = bin_dir / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     venv, _clean_env()).stdout.strip())
    # Dependencies: the running environment's site-packages, as a plain path.
    (site / "deps-from-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                 "--no-index", str(wheel)], venv, _clean_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return bin_dir


@pytest.mark.slow
def test_wheel_builds_without_setuptools_warnings(wheel_build):
    """setuptools' deprecations (license table, data folders "would be ignored") are gone."""
    _, log = wheel_build
    for needle in ("Deprecat", "would be ignored", "is absent from the `packages`",
                   "package init file"):
        hits = [line for line in log.splitlines() if needle.lower() in line.lower()]
        assert not hits, f"{needle!r} in the build log:\n" + "\n".join(hits[:10])
    assert "adding 'funnel-0.1.0.dist-info/licenses/LICENSE'" in log


@pytest.mark.slow
def test_installed_wheel_lists_and_previews_the_bundled_series(installed, tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = _clean_env(FUNNEL_DEV="1", FUNNEL_DB=str(tmp_path / "funnel.db"))
    funnel = str(installed / "funnel")

    where = _run([str(installed / "python"), "-c",
                  "import funnel, templates, content; "
                  "print(funnel.__file__); print(templates.__file__); print(list(content.__path__)[0])"],
                 cwd, env)
    assert where.returncode == 0, where.stderr
    for line in where.stdout.splitlines():  # the wheel's copies, not the checkout's
        assert Path(line).resolve().is_relative_to(installed.parent.resolve()), line

    site = Path(_run([str(installed / "python"), "-c",
                      "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd, env).stdout.strip())
    # Every data file of the checkout is installed.
    for folder in ("templates", "content/series", "content/webinars"):
        files = {p.relative_to(REPO) for p in (REPO / folder).rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts}
        missing = sorted(str(f) for f in files if not (site / f).is_file())
        assert not missing, f"not in the wheel: {missing}"

    listed = _run([funnel, "series", "list"], cwd, env)
    assert listed.returncode == 0, listed.stderr
    assert "importance-of-exercise" in listed.stdout and "28-day-programme" in listed.stdout

    out = tmp_path / "out"
    preview = _run([funnel, "preview", "--all", "--to", str(out)], cwd, env)
    assert preview.returncode == 0, preview.stderr
    names = sorted(p.name for p in out.iterdir())
    # Six weekly parts and 28 course days, each as .html, .txt, .eml and .preview.html.
    assert len([n for n in names if n.endswith(".eml")]) == 6 + 28, names
    assert len(names) == 4 * 34, names
    html = next(out.glob("importance-of-exercise-*.html")).read_text(encoding="utf-8")
    assert "Back in Motion" in html and "<html" in html.lower()
    assert f"wrote {len(names)} files" in preview.stdout
    # Nothing was written into the installed package or the working directory.
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_dev_config_is_written_once_and_read_back(tmp_path):
    path = tmp_path / "funnel.toml"
    assert write_dev_config(path, tmp_path / "dev.db") is True
    first = path.read_text()
    assert write_dev_config(path, tmp_path / "other.db") is False
    assert path.read_text() == first  # an existing file is never touched
    s = load_settings(environ={}, path=path)
    assert s.dev is True
    assert s.db == str(tmp_path / "dev.db")


def test_init_needs_no_secret_key_and_init_dev_gives_later_commands_dev_mode(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli import main
    from funnel.db import connect

    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("FUNNEL_")]:
        monkeypatch.delenv(name)
    runner = CliRunner()
    # Outside dev mode and without a key: init still creates the database.
    plain = runner.invoke(main, ["init"], env={"FUNNEL_DB": str(tmp_path / "plain.db")})
    assert plain.exit_code == 0, plain.output
    assert "applied" in plain.output
    assert {"subscribers", "outbox"} <= set(connect(str(tmp_path / "plain.db")).table_names())
    # A command that signs links still refuses without a key...
    refused = runner.invoke(main, ["subscribers", "add", "a@example.com"],
                            env={"FUNNEL_DB": str(tmp_path / "plain.db")})
    assert refused.exit_code == 1 and "FUNNEL_SECRET_KEYS" in refused.output
    # ...until `funnel init --dev` (what `make up` runs) writes ./funnel.toml.
    dev = runner.invoke(main, ["init", "--dev"])
    assert dev.exit_code == 0, dev.output
    assert "wrote funnel.toml" in dev.output
    assert (tmp_path / "funnel.db").exists()
    added = runner.invoke(main, ["subscribers", "add", "a@example.com", "--name", "Ann"])
    assert added.exit_code == 0, added.output
    rows = list(connect(str(tmp_path / "funnel.db")).query("select email from subscribers"))
    assert rows == [{"email": "a@example.com"}]
    again = runner.invoke(main, ["init", "--dev"])
    assert again.exit_code == 0 and "left unchanged" in again.output


def test_new_content_goes_to_the_working_folder_never_into_the_bundled_one(tmp_path, monkeypatch):
    """Without ./content, `series build` creates ./content/series, not site-packages/content."""
    from click.testing import CliRunner

    from cli import main
    from funnel.settings import BUNDLED_CONTENT

    monkeypatch.chdir(tmp_path)
    for name in [k for k in os.environ if k.startswith("FUNNEL_")]:
        monkeypatch.delenv(name)
    env = {"FUNNEL_DEV": "1", "FUNNEL_DB": str(tmp_path / "funnel.db")}
    samples = sorted(str(p) for p in (REPO / "docs" / "samples").glob("walking-part-*.txt"))
    runner = CliRunner()
    imported = runner.invoke(main, ["content", "import", *samples, "--out", "articles"], env=env)
    assert imported.exit_code == 0, imported.output
    articles = sorted(str(p) for p in (tmp_path / "articles").glob("*.md"))
    assert len(articles) == 2
    built = runner.invoke(main, ["series", "build", "walking-sample", *articles], env=env)
    assert built.exit_code == 0, built.output
    assert (tmp_path / "content" / "series" / "walking-sample" / "series.toml").is_file()
    assert not (BUNDLED_CONTENT / "series" / "walking-sample").exists()
    listed = runner.invoke(main, ["series", "list"], env=env)
    assert "walking-sample" in listed.output and "importance-of-exercise" in listed.output
