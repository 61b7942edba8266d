"""Drip series: a folder of Markdown steps plus ``series.toml``.

Layout (``content/series/<slug>/``)::

    series.toml            title, description, cadence, send_day, send_hour, stream, steps, gaps
    01-therapeutic-first.md
    02-....md

Each step file starts with YAML front matter (``title``, ``part``, ``subject``,
``preheader``, optional ``offset_days``, ``ctas`` and ``source``) followed by
the Markdown body.  A step's *key* is its file stem: it is what the delivery
ledger records, so editing or re-ordering a live series never re-sends a step.

Everything here is validated strictly because a typo in a series is only
otherwise discovered when thousands of emails are already out: an unknown key,
a wrong type, a missing file or a duplicate part is an InputError naming the
file (and line) and the field.

The module also builds a series from imported articles (:func:`build_series`,
splitting long articles into weekly parts); previews are
:mod:`campaigns.preview`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from funnel.errors import FunnelError, InputError, NotFound
from subscribers.streams import SLUG_RE, ContentDirs, series_folder, series_folders, series_roots

from .frontmatter import CTA_KINDS, split_front_matter, toml_line, validate_ctas

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
#: Articles longer than this are split into several emails by :func:`build_series`.
MAX_STEP_WORDS = 1200

SERIES_KEYS = {
    "title",
    "description",
    "cadence",
    "send_day",
    "send_hour",
    "stream",
    "steps",
    "gaps",
}
STEP_KEYS = {"title", "part", "subject", "preheader", "offset_days", "ctas", "source"}


@dataclass
class Step:
    """One email of a series."""

    key: str  # stable key = file stem, e.g. "01-therapeutic-first"
    part: int
    title: str
    subject: str
    preheader: str
    body_md: str
    ctas: list[dict]
    offset_days: int | None
    words: int
    path: Path


@dataclass
class Series:
    """A validated series; ``steps`` are in send order."""

    slug: str
    title: str
    description: str
    cadence_days: int
    send_day: int | None  # 0 = Monday, None = any day
    send_hour: int
    stream: str  # default "series:<slug>"
    steps: list[Step]
    path: Path
    #: Part numbers known to be missing (recorded by ``series build`` or implied
    #: by the step part numbers); see :func:`check_gaps`.
    gaps: list[int] = field(default_factory=list)

    @property
    def cadence_label(self) -> str:
        return cadence_label(self.cadence_days)


# --------------------------------------------------------------------------- helpers


def count_words(markdown: str) -> int:
    """Words a reader sees: link targets, markup and HTML tags are not counted."""
    text = re.sub(r"\]\([^)]*\)", "]", markdown)  # drop link/image targets
    text = re.sub(r"<[^>]+>", " ", text)
    return len(re.findall(r"[^\W_](?:[\w'’-]*\w)?", text))


def format_ranges(numbers: Iterable[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3, 5"`` (for messages about missing parts)."""
    nums = sorted(set(numbers))
    out: list[str] = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(out)


def missing_parts_text(gaps: Sequence[int]) -> str:
    """``"parts 1-3 missing"`` or ``"part 5 missing"``."""
    word = "part" if len(gaps) == 1 else "parts"
    return f"{word} {format_ranges(gaps)} missing"


def parse_cadence(value: object, where: str) -> int:
    """Cadence text to days: "weekly" -> 7, "daily" -> 1, "fortnightly" -> 14, "every N days" -> N."""
    if not isinstance(value, str):
        raise InputError(f"{where}: 'cadence' must be a string such as \"weekly\", got {value!r}")
    text = " ".join(value.lower().split())
    named = {"weekly": 7, "daily": 1, "fortnightly": 14}
    if text in named:
        return named[text]
    match = re.fullmatch(r"every (\d+) days?", text)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise InputError(
        f'{where}: \'cadence\' {value!r} is not understood; use "weekly", "daily", '
        f'"fortnightly" or "every N days"'
    )


def cadence_label(days: int) -> str:
    return {1: "daily", 7: "weekly", 14: "fortnightly"}.get(days, f"every {days} days")


def parse_send_day(value: object, where: str) -> int | None:
    """A weekday name (or 3-letter abbreviation) -> 0..6; ``None``/"any" -> None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "any"):
            return None
        for index, name in enumerate(WEEKDAYS):
            if text in (name, name[:3]):
                return index
    raise InputError(
        f"{where}: 'send_day' must be a weekday name such as \"tuesday\", got {value!r}"
    )


def parse_send_hour(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 23:
        raise InputError(f"{where}: 'send_hour' must be an hour from 0 to 23, got {value!r}")
    return value


# --------------------------------------------------------------------------- loading


def load_step(path: Path) -> Step:
    """Parse and validate one step file; errors name ``file:line`` and the field."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    data, lines_of, body = split_front_matter(text, path)

    def where(key: str) -> str:
        line = lines_of.get(key)
        return f"{path}:{line}" if line else str(path)

    for key in data:
        if key not in STEP_KEYS:
            raise InputError(
                f"{where(str(key))}: front matter {str(key)!r} is not a known key; "
                f"use {', '.join(sorted(STEP_KEYS))}"
            )

    def text_field(key: str, *, required: bool) -> str:
        if key not in data:
            if required:
                raise InputError(f"{path}: front matter {key!r} is missing")
            return ""
        value = data[key]
        if not isinstance(value, str) or (required and not value.strip()):
            raise InputError(f"{where(key)}: front matter {key!r} must be a non-empty string")
        return value.strip()

    title = text_field("title", required=True)
    subject = text_field("subject", required=True)
    preheader = text_field("preheader", required=False)
    text_field("source", required=False)
    if "part" not in data:
        raise InputError(f"{path}: front matter 'part' is missing")
    part = data["part"]
    if isinstance(part, bool) or not isinstance(part, int) or part < 1:
        raise InputError(
            f"{where('part')}: front matter 'part' must be a positive integer, got {part!r}"
        )
    offset = data.get("offset_days")
    if offset is not None and (
        isinstance(offset, bool) or not isinstance(offset, int) or offset < 0
    ):
        raise InputError(
            f"{where('offset_days')}: front matter 'offset_days' must be a whole number of days "
            f"(0 or more), got {offset!r}"
        )
    ctas = validate_ctas(data["ctas"], where("ctas")) if "ctas" in data else []
    if not body.strip():
        raise InputError(f"{path}: the step has no body text after the front matter")
    return Step(
        key=path.stem,
        part=part,
        title=title,
        subject=subject,
        preheader=preheader,
        body_md=body,
        ctas=ctas,
        offset_days=offset,
        words=count_words(body),
        path=path,
    )


def _load_steps(folder: Path, names: list[str], where_steps: str) -> list[Step]:
    """The step files ``names`` (series.toml's ``steps``) in order, each checked and loaded."""
    steps: list[Step] = []
    seen_files: set[str] = set()
    by_part: dict[int, Step] = {}
    for name in names:
        if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".md"):
            raise InputError(
                f"{where_steps}: 'steps' entry {name!r} must be a .md file name in {folder}"
            )
        if name in seen_files:
            raise InputError(f"{where_steps}: 'steps' lists {name!r} twice")
        seen_files.add(name)
        step_path = folder / name
        if not step_path.is_file():
            raise InputError(
                f"{where_steps}: 'steps' lists {name!r} but {step_path} does not exist"
            )
        step = load_step(step_path)
        if step.part in by_part:
            raise InputError(
                f"{step_path}: front matter 'part' {step.part} is also used by "
                f"{by_part[step.part].path.name}; each step needs its own part number"
            )
        if steps and step.part < steps[-1].part:
            raise InputError(
                f"{where_steps}: 'steps' lists {name!r} (part {step.part}) after "
                f"{steps[-1].path.name} (part {steps[-1].part}); list steps in part order"
            )
        by_part[step.part] = step
        steps.append(step)
    return steps


def load_series(path_or_dir: Path) -> Series:
    """Load ``<dir>/series.toml`` and its steps; errors name file(:line) and field."""
    path_or_dir = Path(path_or_dir)
    toml_path = path_or_dir if path_or_dir.name == "series.toml" else path_or_dir / "series.toml"
    folder = toml_path.parent
    slug = folder.name
    if not toml_path.is_file():
        raise NotFound(f"{toml_path}: no series.toml here; a series is a folder with series.toml")
    if not SLUG_RE.match(slug):
        raise InputError(
            f"{folder}: the folder name {slug!r} is not a valid series slug "
            "(lower-case letters, digits and hyphens)"
        )
    text = toml_path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{toml_path}: not valid TOML ({exc})") from exc

    def where(key: str) -> str:
        line = toml_line(text, key)
        return f"{toml_path}:{line}" if line else str(toml_path)

    for key in data:
        if key not in SERIES_KEYS:
            raise InputError(
                f"{where(key)}: {key!r} is not a known key; use {', '.join(sorted(SERIES_KEYS))}"
            )

    def string(key: str, default: str | None) -> str:
        value = data.get(key, default)
        if value is None:
            raise InputError(f"{toml_path}: {key!r} is missing")
        if not isinstance(value, str):
            raise InputError(f"{where(key)}: {key!r} must be a string, got {value!r}")
        return value.strip()

    title = string("title", None)
    if not title:
        raise InputError(f"{where('title')}: 'title' must not be empty")
    description = string("description", "")
    stream = string("stream", f"series:{slug}")
    if not re.fullmatch(r"[a-z0-9][a-z0-9:._-]*", stream):
        raise InputError(f"{where('stream')}: 'stream' {stream!r} must be like \"series:{slug}\"")
    cadence_days = parse_cadence(data.get("cadence", "weekly"), where("cadence"))
    send_day = parse_send_day(data.get("send_day"), where("send_day"))
    send_hour = parse_send_hour(data.get("send_hour", 9), where("send_hour"))

    recorded_gaps = data.get("gaps", [])
    if not isinstance(recorded_gaps, list) or not all(
        isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in recorded_gaps
    ):
        raise InputError(
            f"{where('gaps')}: 'gaps' must be a list of part numbers, got {recorded_gaps!r}"
        )

    names = data.get("steps")
    if names is None:
        raise InputError(f"{toml_path}: 'steps' is missing; list the step files in send order")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f"{where('steps')}: 'steps' must be a non-empty list of file names")
    steps = _load_steps(folder, names, where("steps"))
    parts = {step.part for step in steps}
    implied = [p for p in range(1, steps[-1].part + 1) if p not in parts]
    return Series(
        slug=slug,
        title=title,
        description=description,
        cadence_days=cadence_days,
        send_day=send_day,
        send_hour=send_hour,
        stream=stream,
        steps=steps,
        path=folder,
        gaps=sorted(set(recorded_gaps) | set(implied)),
    )


def list_series(content_dir: ContentDirs) -> list[Series]:
    """Every series under the content folder(s) (``content/`` or ``content/series``), by slug.

    With several folders, the first one holding a slug wins.
    """
    return [load_cached(folder) for folder in series_folders(content_dir).values()]


# A series folder's files are read again only when one of them changes (the worker
# ticks every second and the report and dashboard list every series).
_cache: dict[str, tuple[tuple, Series]] = {}


def _signature(folder: Path) -> tuple:
    """Names, sizes and mtimes of the series' files: changes when anything is edited."""
    try:
        return tuple(
            sorted(
                (e.name, e.stat().st_mtime_ns, e.stat().st_size)
                for e in os.scandir(folder)
                if e.is_file()
            )
        )
    except (FileNotFoundError, NotADirectoryError):
        return ()


def load_cached(folder: Path) -> Series:
    """:func:`load_series` of ``folder``, re-read only when its files change."""
    key = str(folder)
    signature = _signature(folder)
    cached = _cache.get(key)
    if cached is not None and signature and cached[0] == signature:
        return cached[1]
    series = load_series(folder)
    _cache[key] = (signature, series)
    return series


def find_series(content_dir: ContentDirs, slug: str) -> Series:
    """The series ``slug``; NotFound names the folders searched and the known slugs."""
    folder = series_folder(content_dir, slug)
    if folder is None:
        roots = series_roots(content_dir)
        known = sorted(series_folders(content_dir))
        hint = f"; known series: {', '.join(known)}" if known else ""
        raise NotFound(f"series {slug!r} not found in {' or '.join(map(str, roots))}{hint}")
    return load_series(folder)


def check_gaps(series: Series, allow_gaps: bool) -> None:
    """Refuse to schedule a series with missing parts unless the admin insists."""
    if series.gaps and not allow_gaps:
        raise FunnelError(
            f"series {series.slug}: {missing_parts_text(series.gaps)}; "
            "pass --allow-gaps to schedule it anyway"
        )


def resolve_step(series: Series, ref: str | int) -> Step:
    """A step by 1-based number ("3") or key ("03-psoas-and-bridge")."""
    text = str(ref).strip()
    if text.isdigit():
        number = int(text)
        if 1 <= number <= len(series.steps):
            return series.steps[number - 1]
        raise NotFound(
            f"series {series.slug} has steps 1-{len(series.steps)}; there is no step {number}"
        )
    for step in series.steps:
        if step.key == text:
            return step
    keys = ", ".join(s.key for s in series.steps)
    raise NotFound(f"series {series.slug} has no step {text!r}; its steps are {keys}")


# --------------------------------------------------------------------------- splitting


def paragraphs(markdown: str) -> list[str]:
    """Blocks separated by blank lines, stripped; the unit we split at."""
    return [block.strip() for block in re.split(r"\n[ \t]*\n", markdown) if block.strip()]


def _is_heading(block: str) -> bool:
    return bool(re.match(r"#{1,6}\s", block))


def _plain(markdown: str) -> str:
    """Rough Markdown -> text for teasers and preheaders."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", markdown)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^#{1,6}\s+", "", text, flags=re.M)
    text = re.sub(r"[*_`>]", "", text)
    return " ".join(text.split())


def _first_words(text: str, limit: int) -> str:
    words = text.split()
    return " ".join(words[:limit]) + ("…" if len(words) > limit else "")


def teaser_for(next_blocks: Sequence[str], label: str) -> str:
    """The teaser paragraph: "*Next week: <first heading, or first words, of the next part>*"."""
    heading = next((b for b in next_blocks if _is_heading(b)), None)
    if heading is not None:
        text = _plain(heading)
    else:
        text = _first_words(_plain(next_blocks[0]), 12)
    return f"*{label}: {text}*"


def split_body(
    body_md: str, max_words: int = MAX_STEP_WORDS, label: str = "Next week"
) -> list[str]:
    """Split a long body at paragraph boundaries into parts of at most ~``max_words``.

    Parts are balanced (a 1,500-word article becomes two of ~750, not 1,200 + 300)
    and a part never ends on a heading (the heading moves to the part it
    introduces).  Every part but the last ends with a teaser paragraph naming
    what comes next.  Nothing is dropped: the parts' paragraphs without the
    teasers are the original paragraphs, in order.  A single paragraph longer
    than ``max_words`` stays whole, since we only cut between paragraphs.
    """
    blocks = paragraphs(body_md)
    total = count_words(body_md)
    if total <= max_words or len(blocks) < 2:
        return ["\n\n".join(blocks) + "\n"]
    count = math.ceil(total / max_words)
    target = total / count
    chunks: list[list[str]] = [[]]
    words = 0
    for block in blocks:
        chunks[-1].append(block)
        words += count_words(block)
        if words >= target and len(chunks) < count:
            chunks.append([])
            words = 0
    chunks = [c for c in chunks if c]
    for i in range(len(chunks) - 1):  # a trailing heading belongs to the next part
        while len(chunks[i]) > 1 and _is_heading(chunks[i][-1]):
            chunks[i + 1].insert(0, chunks[i].pop())
    parts = []
    for i, chunk in enumerate(chunks):
        blocks_out = list(chunk)
        if i + 1 < len(chunks):
            blocks_out.append(teaser_for(chunks[i + 1], label))
        parts.append("\n\n".join(blocks_out) + "\n")
    return parts


def teaser_label(cadence_days: int) -> str:
    return {1: "Tomorrow", 7: "Next week"}.get(cadence_days, "Next time")


# --------------------------------------------------------------------------- building


@dataclass
class BuildResult:
    series: Series
    gaps: list[int]
    #: article path -> number of emails it became (only articles that were split)
    split: dict[str, int]

    @property
    def warning(self) -> str | None:
        if not self.gaps:
            return None
        return (
            f"series {self.series.slug}: {missing_parts_text(self.gaps)}; it was written with "
            f"gaps = [{', '.join(map(str, self.gaps))}] and needs --allow-gaps to be scheduled"
        )


def _toml_str(value: str) -> str:
    # JSON strings are valid TOML basic strings, except that TOML also forbids DEL.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _preheader_from(body_md: str) -> str:
    block = next((b for b in paragraphs(body_md) if not _is_heading(b)), "")
    text = _plain(block)
    sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(sentence) <= 100:
        return sentence
    return sentence[:100].rsplit(" ", 1)[0] + "…"


def _strip_part_suffix(title: str) -> str:
    return re.sub(r"[\s:(,-]*\bpart\s+\d+\)?\s*$", "", title, flags=re.I).strip() or title


def _order_articles(articles: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """The articles in part order, and the missing part numbers (gaps)."""
    by_part: dict[int, Any] = {}
    for article in articles:
        part = getattr(article, "part", None)
        if part is None and len(articles) == 1:
            part = 1  # one stand-alone article (often a long one to split) is the whole series
        if part is None:
            raise InputError(
                f"{article.path}: front matter 'part' is missing; series build orders "
                "articles by part number"
            )
        if part in by_part:
            raise InputError(
                f"{article.path}: front matter 'part' {part} is also used by {by_part[part].path}"
            )
        by_part[part] = article
    ordered = [by_part[p] for p in sorted(by_part)]
    gaps = [p for p in range(1, max(by_part) + 1) if p not in by_part]
    return ordered, gaps


def _step_file(article: Any, body: str, index: int, count: int, number: int,
               keep_parts: bool) -> tuple[str, str]:
    """``(file name, text)`` of step ``number``: part ``index`` of ``count`` of ``article``."""
    suffix = f" ({index}/{count})" if count > 1 else ""
    # An article may carry its own subject/preheader (set by hand after
    # import); they apply to its first email, the rest get derived ones.
    own_subject = getattr(article, "subject", None) if index == 1 else None
    own_preheader = getattr(article, "preheader", None) if index == 1 else None
    front: dict[str, Any] = {
        "title": article.title + suffix,
        "part": article.part if keep_parts and article.part is not None else number,
        "subject": (own_subject or article.title) + suffix,
        "preheader": own_preheader or _preheader_from(body),
    }
    if article.ctas and index == count:
        front["ctas"] = [{"kind": c["kind"], "text": c["text"]} for c in article.ctas]
    if getattr(article, "source", None):
        front["source"] = str(article.source)
    short = article.slug if len(article.slug) <= 48 else article.slug[:49].rsplit("-", 1)[0]
    stem = f"{number:02d}-{short.strip('-')}"
    name = f"{stem}-{index}.md" if count > 1 else f"{stem}.md"
    text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)
    return name, text + "---\n\n" + body


def _step_files(ordered: Sequence[Any], max_words: int, label: str,
                ) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Every step file in send order, and how many steps each split article became."""
    files: list[tuple[str, str]] = []
    split: dict[str, int] = {}
    chunks = [split_body(article.body_md, max_words, label) for article in ordered]
    # Steps keep the articles' own part numbers ("received part >= 4" then means
    # the clinic's part 4, and a missing part added later slots in).  A split
    # article needs more numbers than it has, so then steps are numbered in
    # send order; the gaps still name the articles' missing parts.
    keep_parts = all(len(b) == 1 for b in chunks)
    for article, bodies in zip(ordered, chunks, strict=True):
        if len(bodies) > 1:
            split[str(article.path)] = len(bodies)
        for index, body in enumerate(bodies, start=1):
            files.append(_step_file(article, body, index, len(bodies), len(files) + 1, keep_parts))
    return files, split


def _series_toml(slug: str, title: str, description: str, cadence: str, send_day: str | None,
                 send_hour: int, gaps: Sequence[int], names: Sequence[str]) -> str:
    toml = [
        f"title = {_toml_str(title)}",
        f"description = {_toml_str(description)}",
        f"cadence = {_toml_str(cadence)}",
    ]
    if send_day:
        toml.append(f"send_day = {_toml_str(send_day.lower())}")
    toml.append(f"send_hour = {send_hour}")
    toml.append(f"stream = {_toml_str('series:' + slug)}")
    if gaps:
        toml.append(f"gaps = [{', '.join(map(str, gaps))}]")
    toml.append("steps = [")
    toml.extend(f"  {_toml_str(name)}," for name in names)
    toml.append("]")
    return "\n".join(toml) + "\n"


def _write_series(out_dir: Path, slug: str, toml: str, files: Sequence[tuple[str, str]],
                  force: bool) -> Path:
    """Write the folder beside ``out_dir/slug``, check it loads, then rename it into place."""
    target = out_dir / slug
    if target.exists() and not force:
        raise InputError(f"{target} already exists; pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{slug}.", dir=out_dir))
    try:
        (staging / "series.toml").write_text(toml, encoding="utf-8")
        for name, text in files:
            (staging / name).write_text(text, encoding="utf-8")
        final = staging / slug  # validate under the real slug before it goes live
        final.mkdir()
        for item in list(staging.iterdir()):
            if item != final:
                item.rename(final / item.name)
        load_series(final)
        if target.exists():  # ".previous" can't clash with a slug (no leading dot)
            target.rename(staging / ".previous")
        os.replace(final, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_series(
    slug: str,
    articles: Sequence[Any],
    out_dir: Path,
    *,
    title: str | None = None,
    description: str = "",
    cadence: str = "weekly",
    send_day: str | None = None,
    send_hour: int = 9,
    force: bool = False,
    max_words: int = MAX_STEP_WORDS,
) -> BuildResult:
    """Write ``out_dir/<slug>/`` from imported articles (``campaigns.articles.Article``).

    Articles are ordered by their ``part`` (a single article needs none); each
    becomes one step, or several
    when it is longer than ``max_words`` (see :func:`split_body`).  Steps are
    numbered 1..N in send order.  Missing source parts (e.g. only parts 4-6 were
    imported) are recorded as ``gaps`` in series.toml and reported in the
    result, so the series can be reviewed but not scheduled by accident.

    All input is validated before anything is written, and the folder is
    written beside the target and renamed into place, so a failure leaves no
    half-built series.
    """
    out_dir = Path(out_dir)
    if not SLUG_RE.match(slug):
        raise InputError(f"slug {slug!r} is not valid; use lower-case letters, digits and hyphens")
    if not articles:
        raise InputError("series build needs at least one article file")
    cadence_days = parse_cadence(cadence, "--cadence")
    parse_send_day(send_day, "--send-day")
    parse_send_hour(send_hour, "--send-hour")
    ordered, gaps = _order_articles(articles)
    # Article.series is a slug ("importance-of-exercise"), not a display title.
    series_title = title or _strip_part_suffix(ordered[0].title)
    files, split = _step_files(ordered, max_words, teaser_label(cadence_days))
    toml = _series_toml(slug, series_title, description, cadence, send_day, send_hour, gaps,
                        [name for name, _ in files])
    target = _write_series(out_dir, slug, toml, files, force)
    return BuildResult(series=load_series(target), gaps=gaps, split=split)


# --------------------------------------------------------------------------- preview


__all__ = [
    "BuildResult",
    "CTA_KINDS",
    "MAX_STEP_WORDS",
    "Series",
    "Step",
    "build_series",
    "check_gaps",
    "count_words",
    "find_series",
    "format_ranges",
    "list_series",
    "load_series",
    "load_step",
    "missing_parts_text",
    "paragraphs",
    "resolve_step",
    "split_body",
]
