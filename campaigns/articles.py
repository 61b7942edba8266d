"""Raw scraped pages become clean Markdown articles with YAML front matter.

The clinic's pages were scraped with the site's furniture still in them
(newsletter boxes, form widgets, appointment boxes, the next article's title).
:func:`parse_raw` sorts every line of a page into *front matter* (title, date,
category label), *furniture* (removed, with the rule that matched) and *body*
(kept verbatim, in order, whitespace normalised).  Which line is furniture is
decided by data, ``cleaning_rules.toml``, never by strings in this module, so
the rules can grow with new pages and the dry run can say which rule removed
what.

The guarantee that matters most is "never lose a body paragraph": rules only
remove lines they positively recognise, and the seed test checks both ways
(every furniture line gone, every body line kept).

Calls to action are recorded as structured front matter (``ctas``) with our
own button text.  They may be detected in furniture that is then removed: the
appointment box is *replaced* by an ``appointment`` CTA the templates render.

:func:`load_article` / :func:`dump_article` are the stable on-disk format the
series code reads.  Nothing here prints or touches the database.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
import tomllib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from funnel.errors import FunnelError, InputError

from .frontmatter import CTA_KINDS, split_front_matter, validate_ctas

RULES_PATH = Path(__file__).with_name("cleaning_rules.toml")
SLUG_MAX = 96

# Rule names for lines that move into the front matter rather than vanish.
FRONT_TITLE = "title -> front matter"
FRONT_DATE = "date -> front matter"
FRONT_CATEGORY = "category -> front matter"
WHITESPACE_ONLY = "whitespace-only line"
REPEATED_DATE = "repeated date"
BYLINE = "byline"
TRAILING_TITLE = "next article's title"
RELATED_TITLE = "related article's title"


# ------------------------------------------------------------------ model
@dataclass
class Article:
    """One article: front matter fields plus the Markdown body."""

    slug: str
    title: str
    body_md: str
    source: str | None = None
    date: dt.date | None = None
    category: str | None = None
    tags: list[str] = field(default_factory=list)
    series: str | None = None
    part: int | None = None
    ctas: list[dict] = field(default_factory=list)  # each {"kind": str, "text": str}
    words: int = 0
    path: Path | None = None
    # Optional fields the series code may add to an article's front matter.
    subject: str | None = None
    preheader: str | None = None
    offset_days: int | None = None


@dataclass
class CleanResult:
    """What :func:`parse_raw` decided, line by line (1-based raw line numbers)."""

    article: Article
    removed: list[tuple[int, str, str]]  # (lineno, text, rule)
    kept: list[tuple[int, str]]  # (lineno, text) body lines, in order
    cta_lines: list[tuple[int, str]] = field(default_factory=list)  # (lineno, kind)
    source_path: Path | None = None
    out_path: Path | None = None


# ------------------------------------------------------------------ rules
@dataclass(frozen=True)
class BlockRule:
    name: str
    start: re.Pattern
    through: re.Pattern
    max_lines: int


@dataclass(frozen=True)
class LineRule:
    name: str
    patterns: tuple[re.Pattern, ...]


@dataclass(frozen=True)
class CtaRule:
    kind: str
    text: str
    patterns: tuple[re.Pattern, ...]


@dataclass(frozen=True)
class Rules:
    """``cleaning_rules.toml``, validated and compiled (see that file for meanings)."""

    space_chars: str
    date_formats: tuple[str, ...]
    title_max_words: int
    title_max_chars: int
    after_title_lines: int
    categories: tuple[str, ...]
    unlisted_label_max_words: int
    blocks: tuple[BlockRule, ...]
    lines: tuple[LineRule, ...]
    byline_max_words: int
    min_letters: int
    min_capitalised: float
    stray_max_words: int
    trailing_min_words: int
    related_min_words: int
    heading_max_words: int
    question_words: frozenset[str]
    ordered_list: re.Pattern
    bullet_list: re.Pattern
    series_pattern: re.Pattern
    drop_leading_words: frozenset[str]
    number_words: dict[str, int]
    ctas: tuple[CtaRule, ...]


class _Table:
    """Reads one TOML table strictly: wrong types and unknown keys are errors."""

    def __init__(self, source: str, where: str, data: object):
        if not isinstance(data, dict):
            raise FunnelError(f"{source}: [{where}] must be a table")
        self.source, self.where, self.data, self.used = source, where, data, set()

    @property
    def at(self) -> str:
        return f"[{self.where}]" if self.where else "the top level"

    def get(self, key: str, kind: type | tuple[type, ...]):
        self.used.add(key)
        if key not in self.data:
            raise FunnelError(f"{self.source}: {self.at} is missing {key!r}")
        value = self.data[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise FunnelError(f"{self.source}: {self.at} {key!r} has the wrong type")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.get(key, list)
        if not all(isinstance(v, str) for v in value):
            raise FunnelError(f"{self.source}: {self.at} {key!r} must be a list of strings")
        return value

    def regex(self, key: str, value: str | None = None) -> re.Pattern:
        value = self.get(key, str) if value is None else value
        try:
            return re.compile(value)
        except re.error as exc:
            raise FunnelError(
                f"{self.source}: {self.at} {key!r} is not a valid regular expression ({exc})"
            ) from exc

    def table(self, key: str) -> _Table:
        where = f"{self.where}.{key}" if self.where else key
        return _Table(self.source, where, self.get(key, dict))

    def done(self) -> None:
        extra = sorted(set(self.data) - self.used)
        if extra:
            raise FunnelError(f"{self.source}: {self.at} has unknown key {extra[0]!r}")


def load_rules(path: Path | None = None) -> Rules:
    """Read and validate a rules file; a broken rule is a one-sentence FunnelError."""
    path = Path(path) if path else RULES_PATH
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FunnelError(f"{path}: cannot read the cleaning rules ({exc})") from exc
    return rules_from_dict(data, str(path))


def rules_from_dict(data: dict, source: str = "cleaning rules") -> Rules:
    """Build :class:`Rules` from parsed TOML (tests use this to try rule changes)."""
    top = _Table(source, "", data)
    text = top.table("text")
    header = top.table("header")
    cats = top.table("categories")
    byline = top.table("byline")
    stray = top.table("stray_titles")
    heads = top.table("headings")
    lists = top.table("lists")
    series = top.table("series")
    numbers = series.table("number_words")

    blocks = []
    for i, raw in enumerate(top.get("block", list)):
        t = _Table(source, f"block {i + 1}", raw)
        blocks.append(
            BlockRule(
                t.get("name", str), t.regex("start"), t.regex("through"), t.get("max_lines", int)
            )
        )
        t.done()
    line_rules = []
    for i, raw in enumerate(top.get("line", list)):
        t = _Table(source, f"line {i + 1}", raw)
        name = t.get("name", str)
        pats = tuple(t.regex("patterns", p) for p in t.strings("patterns"))
        line_rules.append(LineRule(name, pats))
        t.done()
    cta_rules = []
    for i, raw in enumerate(top.get("cta", list)):
        t = _Table(source, f"cta {i + 1}", raw)
        kind = t.get("kind", str)
        if kind not in CTA_KINDS:
            raise FunnelError(
                f"{source}: [cta {i + 1}] kind {kind!r} is not one of {', '.join(CTA_KINDS)}"
            )
        pats = tuple(t.regex("patterns", p) for p in t.strings("patterns"))
        cta_rules.append(CtaRule(kind, t.get("text", str), pats))
        t.done()
    number_words = {k.lower(): numbers.get(k, int) for k in numbers.data}

    rules = Rules(
        space_chars=text.get("space_chars", str),
        date_formats=tuple(header.strings("date_formats")),
        title_max_words=header.get("title_max_words", int),
        title_max_chars=header.get("title_max_chars", int),
        after_title_lines=header.get("after_title_lines", int),
        categories=tuple(cats.strings("labels")),
        unlisted_label_max_words=cats.get("unlisted_before_title_max_words", int),
        blocks=tuple(blocks),
        lines=tuple(line_rules),
        byline_max_words=byline.get("max_words", int),
        min_letters=stray.get("min_letters", int),
        min_capitalised=float(stray.get("min_capitalised", (int, float))),
        stray_max_words=stray.get("max_words", int),
        trailing_min_words=stray.get("trailing_min_words", int),
        related_min_words=stray.get("related_min_words", int),
        heading_max_words=heads.get("max_words", int),
        question_words=frozenset(w.lower() for w in heads.strings("question_words")),
        ordered_list=lists.regex("ordered"),
        bullet_list=lists.regex("bullet"),
        series_pattern=series.regex("pattern"),
        drop_leading_words=frozenset(w.lower() for w in series.strings("drop_leading_words")),
        number_words=number_words,
        ctas=tuple(cta_rules),
    )
    for t in (text, header, cats, byline, stray, heads, lists, series, numbers, top):
        if t is numbers:
            continue  # every key of number_words is a word
        t.done()
    if "n" not in rules.series_pattern.groupindex:
        raise FunnelError(f"{source}: [series] 'pattern' needs a named group (?P<n>...)")
    return rules


@lru_cache(maxsize=1)
def default_rules() -> Rules:
    return load_rules(RULES_PATH)


# ---------------------------------------------------------------- helpers
def slugify(text: str) -> str:
    """ASCII, lower case, hyphen-separated; apostrophes vanish ("don't" -> "dont")."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"['`]", "", text.lower())
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    if len(slug) > SLUG_MAX:
        slug = slug[:SLUG_MAX].rsplit("-", 1)[0]
    return slug


_ROMAN = re.compile(r"^(?=[mdclxvi])m{0,3}(cm|cd|d?c{0,3})(xc|xl|l?x{0,3})(ix|iv|v?i{0,3})$")
_ROMAN_VALUES = {"i": 1, "v": 5, "x": 10, "l": 50, "c": 100, "d": 500, "m": 1000}


def _part_number(token: str, rules: Rules) -> int | None:
    token = token.lower()
    if token.isdigit():
        return int(token) or None
    if token in rules.number_words:
        return rules.number_words[token]
    if _ROMAN.match(token):
        values = [_ROMAN_VALUES[c] for c in token]
        return sum(-v if v < nxt else v for v, nxt in zip(values, values[1:] + [0], strict=True))
    return None


def detect_series(title: str, rules: Rules | None = None) -> tuple[str | None, int | None]:
    """``(series_slug, part)`` from a title such as "... part 4", or ``(None, None)``.

    The series name is the title without its part marker: the text before the
    marker, or after it when the title starts with the marker ("Part 2: ...").
    """
    rules = rules or default_rules()
    found = None
    for m in rules.series_pattern.finditer(title):
        number = _part_number(m.group("n"), rules)
        if number is not None:
            found = (m, number)
    if found is None:
        return None, None
    m, number = found
    separators = " \t:;,.-–—|()[]"
    name = title[: m.start()].strip(separators) or title[m.end() :].strip(separators)
    words = name.split()
    while words and words[0].lower() in rules.drop_leading_words:
        words.pop(0)
    slug = slugify(" ".join(words))
    return (slug or None), number


def _normalise(line: str, rules: Rules) -> str:
    for ch in rules.space_chars:
        line = line.replace(ch, " ")
    return " ".join(line.split())


def _parse_date(text: str, rules: Rules) -> dt.date | None:
    if len(text) > 40 or not any(c.isdigit() for c in text):
        return None
    for fmt in rules.date_formats:
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


def _ends_like_sentence(text: str) -> bool:
    return text[-1:] in ".!,;:"


def _is_title_case(text: str, rules: Rules, min_words: int) -> bool:
    words = text.split()
    if not (min_words <= len(words) <= rules.stray_max_words) or _ends_like_sentence(text):
        return False
    if not text[:1].isupper():
        return False
    significant = [w for w in re.findall(r"[^\W\d_][\w'’-]*", text) if len(w) >= rules.min_letters]
    if len(significant) < 2:
        return False
    capitalised = sum(1 for w in significant if w[0].isupper())
    return capitalised / len(significant) >= rules.min_capitalised


def _category(text: str, rules: Rules, before_title: bool) -> str | None:
    for label in rules.categories:
        if text.lower() == label.lower():
            return label
    limit = rules.unlisted_label_max_words
    if (
        before_title
        and limit
        and len(text.split()) <= limit
        and text == text.lower()
        and re.fullmatch(r"[^\W\d_][\w '’&/-]*", text)
    ):
        return text
    return None


# ---------------------------------------------------------------- parsing
@dataclass
class _Line:
    no: int
    text: str  # whitespace-normalised
    blank: bool
    rule: str | None = None  # set when removed (or moved into the front matter)


def _split_lines(text: str, rules: Rules) -> list[_Line]:
    # split("\n") rather than splitlines(): editors and the dry run count
    # lines by "\n" only, and form feeds or U+2028 must not shift numbers.
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    raw = text.split("\n")
    if raw and raw[-1] == "":
        raw.pop()
    lines = []
    for i, r in enumerate(raw, start=1):
        norm = _normalise(r, rules)
        line = _Line(i, norm, blank=not norm)
        if line.blank and r.strip(" "):
            line.rule = WHITESPACE_ONLY  # reported, so the dry run accounts for it
        lines.append(line)
    return lines


def _apply_blocks(lines: list[_Line], rules: Rules) -> None:
    content = [ln for ln in lines if not ln.blank]
    for block in rules.blocks:
        i = 0
        while i < len(content):
            if content[i].rule is None and block.start.search(content[i].text):
                window = content[i : i + block.max_lines]
                end = next(
                    (k for k, ln in enumerate(window) if block.through.search(ln.text)), None
                )
                if end is not None:
                    for ln in window[: end + 1]:
                        ln.rule = ln.rule or block.name
                    i += end + 1
                    continue
            i += 1


def _apply_line_rules(lines: list[_Line], rules: Rules) -> None:
    for ln in lines:
        if ln.blank or ln.rule:
            continue
        for rule in rules.lines:
            if any(p.search(ln.text) for p in rule.patterns):
                ln.rule = rule.name
                break


def _read_header(lines: list[_Line], rules: Rules, label: str):
    """Find the title, date and category; returns (title_line, date, category)."""
    date = category = None
    title_line = None
    candidates = [ln for ln in lines if not ln.blank and ln.rule is None]
    idx = 0
    for idx, ln in enumerate(candidates):
        parsed = _parse_date(ln.text, rules)
        if parsed and date is None:
            date, ln.rule = parsed, FRONT_DATE
            continue
        cat = _category(ln.text, rules, before_title=True) if category is None else None
        if cat and idx + 1 < len(candidates):
            category, ln.rule = cat, FRONT_CATEGORY
            continue
        title_line = ln
        break
    if title_line is None:
        raise InputError(
            f"{label}: no detectable title (every line is site furniture, a date or a category label)"
        )
    words = len(title_line.text.split())
    if words > rules.title_max_words or len(title_line.text) > rules.title_max_chars:
        raise InputError(
            f"{label}:{title_line.no}: no detectable title; the first text line has {words} words "
            f"and reads like a paragraph, so put the title on a line of its own at the top"
        )
    if not slugify(title_line.text):
        raise InputError(
            f"{label}:{title_line.no}: no detectable title; {title_line.text!r} has no letters or digits"
        )
    title_line.rule = FRONT_TITLE
    for ln in candidates[idx + 1 : idx + 1 + rules.after_title_lines]:
        parsed = _parse_date(ln.text, rules)
        cat = _category(ln.text, rules, before_title=False)
        if parsed and date is None:
            date, ln.rule = parsed, FRONT_DATE
        elif cat and category is None:
            category, ln.rule = cat, FRONT_CATEGORY
        else:
            break
    return title_line, date, category


def _remove_repeated_dates(lines: list[_Line], body_start: int, rules: Rules) -> None:
    by_no = {ln.no: ln for ln in lines}
    for ln in lines:
        if ln.no <= body_start or ln.blank or ln.rule or not _parse_date(ln.text, rules):
            continue
        ln.rule = REPEATED_DATE
        above = by_no.get(ln.no - 1)
        if (
            above is not None
            and above.no > body_start
            and not above.blank
            and above.rule is None
            and 0 < len(above.text.split()) <= rules.byline_max_words
            and above.text[-1:].isalnum()
        ):
            above.rule = BYLINE


def _remove_stray_titles(lines: list[_Line], title_no: int, rules: Rules) -> None:
    body = [ln for ln in lines if ln.no > title_no and not ln.blank and ln.rule is None]
    if len(body) >= 2 and _is_title_case(body[-1].text, rules, rules.trailing_min_words):
        body[-1].rule = TRAILING_TITLE
        body.pop()
    if not rules.related_min_words:
        return
    by_no = {ln.no: ln for ln in lines}

    def blank(no: int) -> bool:
        ln = by_no.get(no)
        return ln is None or ln.blank

    for ln in body[1:]:
        if (
            blank(ln.no - 1)
            and blank(ln.no + 1)
            and _is_title_case(ln.text, rules, rules.related_min_words)
        ):
            ln.rule = RELATED_TITLE


def _detect_ctas(lines: list[_Line], rules: Rules) -> list[tuple[int, CtaRule]]:
    found = []
    for rule in rules.ctas:
        for ln in lines:
            if not ln.blank and any(p.search(ln.text) for p in rule.patterns):
                found.append((ln.no, rule))
                break
    return sorted(found, key=lambda item: item[0])


_MD_BLOCK_START = re.compile(r"^(#{1,6}(\s|$)|>|[-+*](\s|$)|\d+[.)](\s|$)|={3,}\s*$|[-*_]{3,}\s*$)")


def escape_block(text: str) -> str:
    """Stop a plain line from being read as Markdown block syntax (heading, quote...)."""
    return "\\" + text if _MD_BLOCK_START.match(text) else text


def _is_heading(text: str, rules: Rules) -> bool:
    words = text.split()
    if not words or len(words) > rules.heading_max_words:
        return False
    first = re.sub(r"\W", "", words[0]).lower()
    return first in rules.question_words and (text.endswith("?") or text[-1].isalnum())


def _markdown(lines: list[_Line], body: list[_Line], rules: Rules) -> tuple[str, int]:
    """Blocks from body lines; returns (markdown, word count of the plain text)."""
    blocks: list[list[str]] = []
    kinds: list[str] = []
    words = 0
    prev = None
    for ln in body:
        text = ln.text
        if m := rules.ordered_list.match(text):
            kind, md, plain = "ol", f"{m.group(1)} {m.group(2)}", m.group(2)
        elif m := rules.bullet_list.match(text):
            kind, md, plain = "ul", f"- {m.group(2)}", m.group(2)
        elif _is_heading(text, rules):
            kind, md, plain = "h", f"## {text}", text
        else:
            kind, md, plain = "p", escape_block(text), text
        words += len(plain.split())
        between = lines[prev.no : ln.no - 1] if prev else []
        only_blank = all(b.blank for b in between)
        joins = (
            prev is not None
            and kinds[-1] == kind
            and ((kind == "p" and not between) or (kind in ("ol", "ul") and only_blank))
        )
        if joins:
            blocks[-1].append(md)
        else:
            blocks.append([md])
            kinds.append(kind)
        prev = ln
    return "\n\n".join("\n".join(b) for b in blocks), words


def parse_raw(
    text: str, source: str, rules: Rules | None = None, *, label: str | None = None
) -> CleanResult:
    """Clean one scraped page.

    ``source`` is recorded in the front matter (the file name); ``label`` is
    how error messages name the input (defaults to ``source``).  Raises
    InputError for an empty page, a page without a title line or a page with
    nothing left after cleaning.
    """
    rules = rules or default_rules()
    label = label or source
    lines = _split_lines(text, rules)
    if all(ln.blank for ln in lines):
        raise InputError(f"{label}: the file is empty (no text, or whitespace only)")
    if lines[0].text == "---":
        raise InputError(
            f"{label}:1: starts with '---' front matter; import takes raw scraped text, "
            f"and a Markdown article can be used as it is"
        )
    _apply_blocks(lines, rules)
    _apply_line_rules(lines, rules)
    title_line, date, category = _read_header(lines, rules, label)
    header_end = max(ln.no for ln in lines if ln.rule in (FRONT_TITLE, FRONT_DATE, FRONT_CATEGORY))
    _remove_repeated_dates(lines, header_end, rules)
    _remove_stray_titles(lines, title_line.no, rules)
    body = [ln for ln in lines if not ln.blank and ln.rule is None]
    if not body:
        raise InputError(f"{label}: nothing is left after the title once site furniture is removed")

    body_md, words = _markdown(lines, body, rules)
    series, part = detect_series(title_line.text, rules)
    cta_hits = _detect_ctas(lines, rules)
    article = Article(
        slug=slugify(title_line.text),
        title=title_line.text,
        body_md=body_md,
        source=source,
        date=date,
        category=category,
        series=series,
        part=part,
        ctas=[{"kind": rule.kind, "text": rule.text} for _, rule in cta_hits],
        words=words,
    )
    removed = [(ln.no, ln.text, ln.rule) for ln in lines if ln.rule]
    kept = [(ln.no, ln.text) for ln in body]
    return CleanResult(article, removed, kept, [(no, rule.kind) for no, rule in cta_hits])


@dataclass(frozen=True)
class Filters:
    """Which posts an import takes (``--category``, ``--tag``, ``--since``, ``--slug``)."""

    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    since: dt.date | None = None
    slugs: tuple[str, ...] = ()

    def accepts(self, *, slug: str | None, date: dt.date | None,
                categories: Iterable[str] = (), tags: Iterable[str] = ()) -> bool:
        def folded(values: Iterable[str | None]) -> set[str]:
            return {v.casefold() for v in values if v}

        if self.categories and not folded(self.categories) & folded(categories):
            return False
        if self.tags and not folded(self.tags) & folded(tags):
            return False
        if self.since and (date is None or date < self.since):
            return False
        return not self.slugs or (slug or "") in self.slugs


@dataclass
class Block:
    """One block of an extracted HTML page: its Markdown and the plain text the rules read.

    ``kind`` is "p", "h", "ul", "ol", "quote", "table", "img" or "embed"; list
    items are one block each (consecutive items of one kind form one list).
    """

    kind: str
    md: str
    text: str


_TEXT_KINDS = ("p", "h", "ul", "ol", "quote")


def clean_blocks(
    blocks: list[Block],
    *,
    title: str,
    source: str,
    label: str | None = None,
    date: dt.date | None = None,
    category: str | None = None,
    tags: Iterable[str] = (),
    removed: Iterable[tuple[str, str]] = (),
    rules: Rules | None = None,
) -> CleanResult:
    """The text importer's rules applied to blocks taken out of HTML.

    Block and line rules, the next/related article's title, CTA and "Part N"
    detection are the ones :func:`parse_raw` uses, so one set of rules serves
    both paths.  Block numbers stand in for line numbers in the result;
    ``removed`` are (text, reason) pairs the HTML stage already took out, reported
    with number 0.
    """
    rules = rules or default_rules()
    label = label or source
    lines = [_Line(i, _normalise(b.text, rules), blank=False) for i, b in enumerate(blocks, 1)]
    for ln, b in zip(lines, blocks, strict=True):
        if not ln.text and b.kind in _TEXT_KINDS:
            ln.blank = True
    text_lines = [ln for ln, b in zip(lines, blocks, strict=True) if b.kind in _TEXT_KINDS]
    _apply_blocks(text_lines, rules)
    _apply_line_rules(text_lines, rules)
    paragraphs = [ln for ln, b in zip(lines, blocks, strict=True) if b.kind == "p" and not ln.blank]
    _remove_stray_titles(paragraphs, 0, rules)
    kept_blocks = [(ln, b) for ln, b in zip(lines, blocks, strict=True) if not ln.blank and not ln.rule]
    if not any(b.kind in _TEXT_KINDS for _, b in kept_blocks):
        raise InputError(f"{label}: no discernible article; nothing is left once site furniture is removed")
    parts: list[str] = []
    prev = None
    for _, b in kept_blocks:
        if prev is not None and prev == b.kind and b.kind in ("ul", "ol"):
            parts[-1] += "\n" + b.md
        else:
            parts.append(b.md)
        prev = b.kind
    body_md = "\n\n".join(parts)
    words = sum(len(b.text.split()) for _, b in kept_blocks if b.kind in _TEXT_KINDS)
    series, part = detect_series(title, rules)
    cta_hits = _detect_ctas(text_lines, rules)
    article = Article(
        slug=slugify(title),
        title=title,
        body_md=body_md,
        source=source,
        date=date,
        category=category,
        tags=list(tags),
        series=series,
        part=part,
        ctas=[{"kind": rule.kind, "text": rule.text} for _, rule in cta_hits],
        words=words,
    )
    gone = [(0, text, reason) for text, reason in removed]
    gone += [(ln.no, ln.text, ln.rule) for ln in lines if ln.rule]
    kept = [(ln.no, b.md) for ln, b in kept_blocks]
    return CleanResult(article, gone, kept, [(no, rule.kind) for no, rule in cta_hits])


# ------------------------------------------------------------------ files
def read_text_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"save the file as UTF-8"
        ) from exc


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(results: list[CleanResult], out_dir: Path) -> list[CleanResult]:
    """Write each result to its ``out_path`` (atomically, file by file)."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for result in results:
            _write_atomically(result.out_path, dump_article(result.article))
    except OSError as exc:
        raise FunnelError(
            f"{exc.filename or out_dir}: cannot write ({exc.strerror or exc})"
        ) from exc
    for result in results:
        result.article.path = result.out_path
    return results


def format_preview(result: CleanResult, width: int = 72) -> str:
    """A dry-run report: detected front matter, then every line kept or removed."""
    a = result.article
    where = result.source_path or a.source
    cta_at = dict((kind, no) for no, kind in result.cta_lines)
    ctas = ", ".join(f"{c['kind']} (line {cta_at.get(c['kind'], '?')})" for c in a.ctas)
    out = [
        f"{where} -> {result.out_path or a.slug + '.md'}",
        f"  title:    {a.title}",
        f"  slug:     {a.slug}",
        f"  date:     {a.date.isoformat() if a.date else '-'}",
        f"  category: {a.category or '-'}",
        f"  tags:     {', '.join(a.tags) or '-'}",
        f"  series:   {a.series + f' (part {a.part})' if a.series else '-'}",
        f"  ctas:     {ctas or '-'}",
        f"  words:    {a.words}",
    ]
    rows = [(no, "keep", "", text) for no, text in result.kept]
    rows += [(no, "remove", f"[{rule}] ", text) for no, text, rule in result.removed]
    for no, action, rule, text in sorted(rows):
        line = f"  {no or '-':>4} {action:<6} {rule}{text}"
        out.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(out)


# ----------------------------------------------------------- front matter
_FRONT_ORDER = (
    "title",
    "date",
    "source",
    "category",
    "tags",
    "series",
    "part",
    "subject",
    "preheader",
    "offset_days",
    "ctas",
    "words",
)
_STR_KEYS = {"title", "source", "category", "series", "subject", "preheader"}
_INT_KEYS = {"part": 1, "words": 0, "offset_days": 0}  # key -> smallest allowed value
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


def dump_article(article: Article) -> str:
    """Front matter (YAML) plus the Markdown body, as written to ``<slug>.md``."""
    data = {}
    for key in _FRONT_ORDER:
        value = getattr(article, key)
        if value is None or (key in ("ctas", "tags") and not value):
            continue
        if key == "ctas":
            value = [{"kind": c["kind"], "text": c["text"]} for c in value]
        data[key] = value
    front = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10_000)
    return f"---\n{front}---\n\n{article.body_md.strip()}\n"


def _front_error(path: Path, key: str, what: str) -> InputError:
    return InputError(f"{path}: front matter {key!r} must be {what}")


def _check_front(path: Path, data: dict) -> dict:
    allowed = set(_FRONT_ORDER)
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        raise InputError(f"{path}: unknown front matter key {unknown[0]!r}")
    if "title" not in data:
        raise InputError(f"{path}: front matter is missing 'title'")
    out: dict = {}
    for key, value in data.items():
        if value is None and key != "title":
            continue
        if key in _STR_KEYS:
            if not isinstance(value, str) or not value.strip():
                raise _front_error(path, key, "a non-empty string")
            if key == "series" and not _SLUG_RE.match(value):
                raise _front_error(path, key, "a slug such as 'importance-of-exercise'")
        elif key in _INT_KEYS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise _front_error(path, key, "an integer")
            if value < _INT_KEYS[key]:
                raise _front_error(path, key, f"at least {_INT_KEYS[key]}")
        elif key == "date":
            if isinstance(value, str):
                try:
                    value = dt.date.fromisoformat(value)
                except ValueError:
                    raise _front_error(path, key, "a date written YYYY-MM-DD") from None
            if not isinstance(value, dt.date) or isinstance(value, dt.datetime):
                raise _front_error(path, key, "a date written YYYY-MM-DD")
        elif key == "tags":
            if not isinstance(value, list) or not all(
                isinstance(t, str) and t.strip() for t in value
            ):
                raise _front_error(path, key, "a list of non-empty strings")
            value = list(value)
        elif key == "ctas":
            what = f"a list of {{kind, text}} items with kind one of {', '.join(CTA_KINDS)}"
            try:
                validate_ctas(value, str(path))
            except InputError:
                raise _front_error(path, key, what) from None
            value = [dict(item) for item in value]
        out[key] = value
    return out


def load_article(path: Path) -> Article:
    """Read ``<slug>.md`` (front matter + Markdown body) and validate the front matter."""
    path = Path(path)
    text = read_text_file(path).removeprefix("\ufeff").replace("\r\n", "\n")
    # An article file's own words for a missing or open block; the rest is the shared parser.
    lines = text.split("\n")
    if lines[0].rstrip() != "---":
        raise InputError(f"{path}:1: missing front matter; the file must start with a '---' line")
    if not any(ln.rstrip() in ("---", "...") for ln in lines[1:]):
        raise InputError(f"{path}:1: the front matter is never closed with a '---' line")
    data, _lines, body = split_front_matter(text, path)
    front = _check_front(path, data)
    return Article(slug=path.stem, body_md=body.strip(), path=path, **front)
