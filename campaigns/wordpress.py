"""WordPress exports: the WXR file ("Tools -> Export") and saved REST API answers.

The WXR is streamed with ``lxml.etree.iterparse`` (entities not resolved, no
network, no huge-tree mode) and every ``<item>`` is dropped once read, so a
200 MB export never sits in memory.  A file that declares entities is refused
before parsing (:func:`refuse_entities`), which also covers "billion laughs".

Only published posts come in.  Their content loses the Gutenberg block comments
and the shortcodes (enclosing ones keep their text; ``[embed]`` of a video
becomes the video line) and then goes through the same HTML-to-Markdown and
cleaning rules as a saved page (:func:`campaigns.htmlpage.fragment_article`).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from funnel.errors import InputError

from .articles import CleanResult, Filters, slugify
from .htmlpage import VIDEO_MARK, fragment_article, video_line

WXR_NS = re.compile(r"^https?://wordpress\.org/export/(1\.[0-2])/$")
CONTENT_NS = "http://purl.org/rss/1.0/modules/content/"
_BLOCK_COMMENT = re.compile(r"<!--\s*/?wp:.*?-->", re.S)
_SHORTCODE = re.compile(r"\[(/?)([a-z][a-z0-9]*(?:[_-][a-z0-9]+)+|caption|embed|gallery|audio|video|playlist|wpforms)(\s[^\]]*)?(/?)\]")
_EMBED = re.compile(r"\[embed[^\]]*\]\s*(\S+?)\s*\[/embed\]")
_BLOCK_START = re.compile(r"^\s*<(p|h[1-6]|ul|ol|blockquote|table|figure|div|pre|img|iframe)\b", re.I)


@dataclass
class Post:
    title: str
    slug: str
    date: dt.date | None
    status: str
    kind: str
    categories: list[str]
    tags: list[str]
    content: str
    where: str  # "export.xml: item 12 ('A title')"


def refuse_entities(head: bytes, label: str) -> None:
    """An export or a feed never declares entities; a file that does is refused unread.

    ``head`` is the file's first 64 KB; a DOCTYPE that does not end in it (one
    padded to hide its declarations further on) is refused too.
    """
    doctype = re.search(rb"<!DOCTYPE", head, re.I)
    unended = doctype and not re.search(rb"<[A-Za-z]", head[doctype.end() :].split(b"]>")[-1])
    if re.search(rb"<!ENTITY", head, re.I) or unended:
        raise InputError(
            f"{label}: the XML declares entities (<!ENTITY>), which exports and feeds never "
            f"need; refused so that entity expansion cannot exhaust memory"
        )


def clean_content(raw: str) -> str:
    """Post HTML without block comments and shortcodes, with paragraphs as ``<p>``."""
    text = _BLOCK_COMMENT.sub("", raw)
    text = _EMBED.sub(lambda m: _embed(m.group(1)), text)
    # Enclosing shortcodes ([caption]...[/caption]) keep their text; the rest go.
    return _autop(_SHORTCODE.sub("", text))


def _embed(url: str) -> str:
    m = re.match(r"https?://(?:www\.)?youtube\.com/watch\?v=([\w-]+)|https?://youtu\.be/([\w-]+)", url)
    if m:
        return f"\n\n<p>{VIDEO_MARK}https://www.youtube.com/watch?v={m.group(1) or m.group(2)}</p>\n\n"
    m = re.match(r"https?://(?:www\.)?vimeo\.com/(\d+)", url)
    if m:
        return f"\n\n<p>{video_line('https://player.vimeo.com/video/' + m.group(1))}</p>\n\n"
    return f'\n\n<p><a href="{html.escape(url)}">{html.escape(url)}</a></p>\n\n'


def _autop(text: str) -> str:
    """WordPress stores classic-editor posts without <p>: blank lines separate paragraphs."""
    chunks = [c.strip() for c in re.split(r"\n\s*\n", text) if c.strip()]
    return "\n".join(c if _BLOCK_START.match(c) else f"<p>{c}</p>" for c in chunks)


# --------------------------------------------------------------------- WXR
def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _wxr_date(gmt: str | None, local: str | None) -> dt.date | None:
    for value in (gmt, local):
        if value and not value.startswith("0000"):
            try:
                return dt.date.fromisoformat(value.strip()[:10])
            except ValueError:
                continue
    return None


def _item(item, n: int, label: str) -> Post:
    fields: dict[str, str] = {}
    cats: list[str] = []
    tags: list[str] = []
    for child in item:
        if not isinstance(child.tag, str):
            continue
        name = _local(child.tag)
        text = child.text or ""
        if name == "category":
            (tags if child.get("domain") == "post_tag" else cats).append(" ".join(text.split()))
        elif name == "encoded" and child.tag.startswith("{" + CONTENT_NS):
            fields["content"] = text
        else:
            fields.setdefault(name, text)
    title = " ".join(fields.get("title", "").split())
    where = f"{label}: item {n} ({title!r})" if title else f"{label}: item {n}"
    return Post(
        title=title,
        slug=fields.get("post_name", "").strip(),
        date=_wxr_date(fields.get("post_date_gmt"), fields.get("post_date")),
        status=fields.get("status", "").strip(),
        kind=fields.get("post_type", "").strip(),
        categories=[c for c in cats if c],
        tags=[t for t in tags if t],
        content=fields.get("content", ""),
        where=where,
    )


def iter_wxr(path: Path, label: str) -> Iterator[Post]:
    """Every ``<item>`` of a WXR file, streamed; InputError for a file that is not one."""
    with open(path, "rb") as fh:
        refuse_entities(fh.read(65536), label)
        fh.seek(0)
        yield from _items(fh, label)


def _items(fh, label: str) -> Iterator[Post]:
    events = etree.iterparse(
        fh, events=("start", "end"), resolve_entities=False, no_network=True,
        huge_tree=False, load_dtd=False,
    )
    n = 0
    checked = False
    try:
        for event, el in events:
            if not checked:
                checked = True
                _check_root(el, label)
                continue
            if event == "end" and _local(el.tag) == "item":
                n += 1
                yield _item(el, n, label)
                el.clear()
                parent = el.getparent()
                while parent is not None and el.getprevious() is not None:
                    del parent[0]
    except etree.XMLSyntaxError as exc:
        raise InputError(f"{label}:{exc.lineno}: not well-formed XML ({exc.msg})") from exc


def _check_root(root, label: str) -> None:
    name = _local(root.tag)
    versions = [m.group(1) for ns in root.nsmap.values() if ns and (m := WXR_NS.match(ns))]
    if name != "rss" or not versions:
        other = [ns for p, ns in root.nsmap.items() if p == "wp"]
        why = f"its 'wp' namespace is {other[0]!r}" if other else f"the root element is <{name}>"
        raise InputError(
            f"{label}: not a WordPress export (WXR 1.0-1.2); {why}"
        )


def is_wxr(head: bytes) -> bool:
    return b"wordpress.org/export/" in head


def read_wxr(path: Path, filters: Filters, label: str | None = None) -> list[CleanResult]:
    label = label or str(path)
    with closing(iter_wxr(path, label)) as posts:
        return [_article(post, filters) for post in posts if _wanted(post, filters)]


# -------------------------------------------------------------------- REST
def _rendered(value) -> str:
    if isinstance(value, dict):
        value = value.get("rendered", "")
    return value if isinstance(value, str) else ""


def _terms(entry: dict) -> tuple[list[str], list[str]]:
    cats: list[str] = []
    tags: list[str] = []
    for group in (entry.get("_embedded") or {}).get("wp:term") or []:
        for term in group if isinstance(group, list) else []:
            name = html.unescape(str(term.get("name", ""))).strip()
            if name:
                (tags if term.get("taxonomy") == "post_tag" else cats).append(name)
    return cats, tags


def read_rest(path: Path, filters: Filters, label: str | None = None) -> list[CleanResult]:
    """A saved ``/wp-json/wp/v2/posts`` answer (``?_embed`` gives category and tag names)."""
    label = label or str(path)
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{label}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, list) or not all(isinstance(e, dict) and "content" in e for e in data):
        raise InputError(f"{label}: not a WordPress REST answer (expected a list of posts "
                         f"from /wp-json/wp/v2/posts)")
    out = []
    for n, entry in enumerate(data, 1):
        title = " ".join(re.sub(r"<[^>]+>", "", html.unescape(_rendered(entry.get("title")))).split())
        cats, tags = _terms(entry)
        post = Post(
            title=title,
            slug=str(entry.get("slug") or ""),
            date=_wxr_date(entry.get("date_gmt"), entry.get("date")),
            status=str(entry.get("status", "publish")),
            kind=str(entry.get("type", "post")),
            categories=cats,
            tags=tags,
            content=_rendered(entry.get("content")),
            where=f"{label}: entry {n} ({title!r})",
        )
        if _wanted(post, filters):
            out.append(_article(post, filters))
    return out


# ------------------------------------------------------------------ shared
def _wanted(post: Post, filters: Filters) -> bool:
    return post.status == "publish" and post.kind == "post" and filters.accepts(
        slug=post.slug, date=post.date, categories=post.categories, tags=post.tags
    )


def _article(post: Post, filters: Filters) -> CleanResult:
    if not post.title:
        raise InputError(f"{post.where}: the post has no title")
    result = fragment_article(
        clean_content(post.content),
        title=post.title,
        source=Path(post.where.split(": ", 1)[0]).name + (f"#{post.slug}" if post.slug else ""),
        label=post.where,
        date=post.date,
        categories=post.categories,
        tags=post.tags,
    )
    if slugify(post.slug):
        result.article.slug = slugify(post.slug)
    return result
