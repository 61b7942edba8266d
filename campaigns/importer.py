"""`funnel content import`: every kind of source to cleaned articles on disk.

The file's kind decides the reader:

- ``.txt`` / ``.md`` and other text: scraped text (:func:`articles.parse_raw`);
- ``.html`` / ``.htm`` / ``.mhtml``: a saved page (:mod:`campaigns.htmlpage`);
- ``.xml`` / ``.rss`` / ``.atom``: a WordPress export (:mod:`campaigns.wordpress`)
  when it carries the WXR namespace, else an RSS/Atom feed (:mod:`campaigns.feeds`);
- ``.json``: a saved WordPress REST answer;
- a URL (``--url``): a feed fetched through :func:`funnel.fetch.get`.

Every source is read and checked before anything is written.  Without
``skip_invalid`` one bad source stops the import with nothing written; with it
the good sources are written and each bad one is reported in one line.  A file
is never half-written (each article is written atomically).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from funnel import fetch
from funnel.errors import FunnelError, InputError

from . import articles, feeds, htmlpage, wordpress
from .articles import CleanResult, Filters
from .series import missing_parts_text

HTML_SUFFIXES = (".html", ".htm", ".mhtml", ".mht")
XML_SUFFIXES = (".xml", ".rss", ".atom", ".wxr")


@dataclass
class ImportReport:
    results: list[CleanResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def series(self) -> list[str]:
        """One line per series found: its parts and, if any, its gaps."""
        parts: dict[str, set[int]] = defaultdict(set)
        for r in self.results:
            if r.article.series and r.article.part:
                parts[r.article.series].add(r.article.part)
        lines = []
        for slug, found in sorted(parts.items()):
            gaps = [n for n in range(1, max(found) + 1) if n not in found]
            text = f"series {slug}: parts {', '.join(map(str, sorted(found)))}"
            lines.append(text + (f" ({missing_parts_text(gaps)})" if gaps else ""))
        return lines


def _size_checked(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise InputError(
                f"{path}: the page is {size / 1e6:.1f} MB, more than the "
                f"{max_bytes / 1e6:.0f} MB a page may be; save the article page alone"
            )
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc


def read_path(path: Path, filters: Filters, *, max_bytes: int = fetch.MAX_BYTES) -> list[CleanResult]:
    """The articles in one file (InputError naming the file, and the entry, if it has none)."""
    suffix = path.suffix.lower()
    if suffix in HTML_SUFFIXES:
        found = [htmlpage.parse_page(_size_checked(path, max_bytes), path.name, label=str(path))]
    elif suffix in XML_SUFFIXES:
        try:
            with open(path, "rb") as fh:
                head = fh.read(65536)
        except OSError as exc:
            raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
        if wordpress.is_wxr(head):
            return wordpress.read_wxr(path, filters)
        if any(mark in head for mark in (b"<rss", b"<feed", b"<rdf:RDF")):
            return feeds.read_feed(_size_checked(path, max_bytes), filters, str(path))
        return wordpress.read_wxr(path, filters)  # refuses it, saying what the file is not
    elif suffix == ".json":
        return wordpress.read_rest(path, filters)
    else:
        text = articles.read_text_file(path)
        found = [articles.parse_raw(text, source=path.name, label=str(path))]
    return [r for r in found if _accepts(filters, r)]


def _accepts(filters: Filters, r: CleanResult) -> bool:
    a = r.article
    cats = [a.category] if a.category else []
    return filters.accepts(slug=a.slug, date=a.date, categories=cats, tags=a.tags)


def read_url(url: str, filters: Filters, *, allow_private: bool = False) -> list[CleanResult]:
    resp = feeds.fetch_feed(url, allow_private=allow_private)
    return feeds.read_feed(resp.body, filters, url)


def import_paths(
    sources: list[Path | str],
    out_dir: Path,
    *,
    urls: tuple[str, ...] = (),
    filters: Filters | None = None,
    dry_run: bool = False,
    skip_invalid: bool = False,
    allow_private: bool = False,
) -> ImportReport:
    """Read every source, then (unless ``dry_run``) write ``out_dir/<slug>.md`` per article."""
    filters = filters or Filters()
    out_dir = Path(out_dir)
    report = ImportReport()
    by_slug: dict[str, str] = {}
    items: list[tuple[str, object]] = [(str(p), Path(p)) for p in sources]
    items += [(u, u) for u in urls]
    for name, source in items:
        try:
            if isinstance(source, Path):
                found = read_path(source, filters)
            else:
                found = read_url(source, filters, allow_private=allow_private)
            for r in found:
                slug = r.article.slug
                if slug in by_slug:
                    what = "its title" if len(found) == 1 else repr(r.article.title)
                    raise InputError(
                        f"{name}: {what} gives the slug {slug!r}, which {by_slug[slug]} already uses"
                    )
        except FunnelError as exc:
            if not skip_invalid:
                raise
            report.problems.append(str(exc))
            continue
        for r in found:
            by_slug[r.article.slug] = name
            r.source_path = Path(name) if isinstance(source, Path) else None
            r.out_path = out_dir / f"{r.article.slug}.md"
            report.results.append(r)
    if not dry_run and report.results:
        articles.write_results(report.results, out_dir)
    return report
