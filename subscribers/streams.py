"""Which drip series exist on disk: their folders and slugs.

A reader's series stream is ``series:<slug>``; the series itself is a folder
``<content>/series/<slug>/`` holding a ``series.toml``.  Segment filters
(``series:<slug>>=3``) need to know which slugs exist without loading and
validating every series, and the content side (:mod:`campaigns.series`)
finds a series' folder the same way, so the lookup lives here, below both.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from pathlib import Path

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")

ContentDirs = Path | str | Sequence[Path]


def _series_root(content_dir: Path) -> Path:
    """Accept either the content root (``content/``) or ``content/series`` itself."""
    content_dir = Path(content_dir)
    sub = content_dir / "series"
    return sub if sub.is_dir() else content_dir


def series_roots(content_dir: ContentDirs) -> list[Path]:
    """The folders that hold series, one per content folder, in search order."""
    dirs = [content_dir] if isinstance(content_dir, Path | str) else list(content_dir)
    return [_series_root(Path(d)) for d in dirs]


def series_folder(content_dir: ContentDirs, slug: str) -> Path | None:
    """The folder of series ``slug``: the first content folder that has it."""
    if not SLUG_RE.match(slug):
        return None
    for root in series_roots(content_dir):
        if (root / slug / "series.toml").is_file():
            return root / slug
    return None


def series_folders(content_dir: ContentDirs) -> dict[str, Path]:
    """Every series folder by slug, sorted; with several content folders the first wins."""
    folders: dict[str, Path] = {}
    for root in series_roots(content_dir):
        if root.is_dir():
            for p in sorted(root.glob("*/series.toml")):
                folders.setdefault(p.parent.name, p.parent)
    return {slug: folders[slug] for slug in sorted(folders)}


def series_title(content_dir: ContentDirs, slug: str) -> str | None:
    """The ``title`` in a series' ``series.toml``, or None when it can't be read.

    Reader-facing labels (the preferences page) need only the title, so they
    read it here rather than loading and validating the whole series from
    :mod:`campaigns.series`, a floor above.
    """
    folder = series_folder(content_dir, slug)
    if folder is None:
        return None
    try:
        title = tomllib.loads((folder / "series.toml").read_text(encoding="utf-8")).get("title")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    return title.strip() or None if isinstance(title, str) else None
