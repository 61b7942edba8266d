"""A saved web page (or a post's HTML) becomes an article with the text importer's rules.

The path a page takes:

1. :func:`decode_page` turns bytes into text (declared charset, else UTF-8, else
   Windows-1252, the usual charset of pages that do not say).
2. :func:`read_front` reads the front matter from the markup: the title from
   ``og:title``, the article's ``<h1>`` or ``<title>`` without the site name; the
   date from ``article:published_time`` or WordPress's ``<time datetime>``;
   categories and tags from ``rel="category"``/``rel="tag"`` links.
3. :func:`prune` removes site furniture by element and class (``html_rules.toml``),
   remembering what it removed and why, and video iframes become a marker line.
4. A content extractor (trafilatura, measured against readability-lxml by
   ``bench/extractors.py``) takes the article out of what is left.
5. :func:`to_blocks` converts that HTML into the Markdown the text importer writes,
   and :func:`campaigns.articles.clean_blocks` runs the same cleaning, CTA and
   "Part N" rules on it.

Nothing here prints, fetches or writes.
"""

from __future__ import annotations

import codecs
import datetime as dt
import email
import email.policy
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import lxml.html
from lxml import etree

from funnel.errors import FunnelError, InputError

from .articles import Block, CleanResult, clean_blocks, escape_block

RULES_PATH = Path(__file__).with_name("html_rules.toml")
DEFAULT_EXTRACTOR = "trafilatura"
VIDEO_MARK = "\u25b6 Video: "
_VIDEO_SRC = (
    (re.compile(r"^https?://(?:www\.)?youtube(?:-nocookie)?\.com/embed/([\w-]{6,})"), "youtube"),
    (re.compile(r"^https?://player\.vimeo\.com/video/(\d+)"), "vimeo"),
)
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})""", re.I)


@dataclass(frozen=True)
class HtmlRules:
    drop_tags: frozenset[str]
    furniture: tuple[tuple[str, tuple[re.Pattern, ...]], ...]


@lru_cache(maxsize=1)
def html_rules() -> HtmlRules:
    try:
        data = tomllib.loads(RULES_PATH.read_text(encoding="utf-8"))
        furniture = tuple(
            (t["name"], tuple(re.compile(p) for p in t["patterns"])) for t in data["furniture"]
        )
        return HtmlRules(frozenset(data["drop_tags"]), furniture)
    except (OSError, KeyError, TypeError, re.error, tomllib.TOMLDecodeError) as exc:
        raise FunnelError(f"{RULES_PATH}: cannot read the HTML rules ({exc})") from exc


@dataclass
class Front:
    title: str | None = None
    date: dt.date | None = None
    categories: list[str] | None = None
    tags: list[str] | None = None
    base: str | None = None


# ------------------------------------------------------------------ bytes
def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        found = codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None
    # Browsers read a page labelled Latin-1 as Windows-1252 (WHATWG Encoding).
    return "cp1252" if found in ("latin-1", "iso8859-1", "ascii") else found


def decode_page(data: bytes, declared: str | None = None) -> str:
    """Text of a page: its declared charset if the bytes fit it, else UTF-8, else Windows-1252."""
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8", errors="replace")
    sniffed = _META_CHARSET.search(data[:4096])
    for name in (_codec(declared), _codec(sniffed.group(1).decode("ascii")) if sniffed else None):
        if name and name != "utf-8":
            try:
                text = data.decode(name)
            except UnicodeDecodeError:
                continue
            if name != "cp1252" or not _utf8_ok(data):
                return text
    if _utf8_ok(data):
        return data.decode("utf-8")
    return data.decode("cp1252", errors="replace")


def _utf8_ok(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def mhtml_html(data: bytes, label: str) -> tuple[bytes, str | None, str | None]:
    """The HTML part of a saved ``.mhtml`` page: (bytes, charset, its Content-Location)."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            return (
                part.get_payload(decode=True) or b"",
                part.get_content_charset(),
                part.get("Content-Location"),
            )
    raise InputError(f"{label}: the MHTML file has no HTML part")


def parse_document(text: str, label: str):
    text = re.sub(r"^\s*<\?xml[^>]*\?>", "", text)
    if not text.strip():
        raise InputError(f"{label}: the file is empty (no text, or whitespace only)")
    try:
        return lxml.html.document_fromstring(text)
    except (etree.ParserError, ValueError) as exc:
        raise InputError(f"{label}: not a readable HTML page ({exc})") from exc


# ----------------------------------------------------------- front matter
def _meta(doc, prop: str) -> str | None:
    for el in doc.xpath("//meta[@property=$p or @name=$p]", p=prop):
        value = " ".join((el.get("content") or "").split())
        if value:
            return value
    return None


def _date(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text.strip()[:10])
    except ValueError:
        return None


def _texts(found) -> list[str]:
    """Distinct non-empty texts of elements (or attribute values), in order."""
    texts = (el.text_content() if hasattr(el, "text_content") else str(el) for el in found)
    return list(dict.fromkeys(t for t in (" ".join(x.split()) for x in texts) if t))


def read_front(doc, base: str | None = None) -> Front:
    """Title, date, categories, tags and the page's own URL, from the markup."""
    site = _meta(doc, "og:site_name")
    title = _meta(doc, "og:title")
    if not title:
        h1 = doc.xpath("//article//h1 | //main//h1 | //h1")
        title = " ".join(h1[0].text_content().split()) if h1 else None
    if not title:
        found = doc.find(".//title")
        raw = " ".join((found.text_content() if found is not None else "").split())
        pieces = [p.strip() for p in re.split(r"\s+[|–—-]\s+", raw) if p.strip()]
        if site and site in pieces and len(pieces) > 1:
            pieces.remove(site)
        elif len(pieces) > 1:
            pieces = pieces[:-1]  # "Title | Site": the site name comes last
        title = " - ".join(pieces) or None
    date = _date(_meta(doc, "article:published_time"))
    if date is None:
        stamps = doc.xpath(
            "//time[contains(@class,'published') or contains(@class,'entry-date')]/@datetime"
            " | //meta[@itemprop='datePublished']/@content | //time/@datetime"
        )
        date = next((d for d in map(_date, stamps) if d), None)
    cats = _texts(doc.xpath("//a[contains(concat(' ', @rel, ' '), ' category ')]"))
    tags = _texts(doc.xpath("//a[@rel='tag'] | //meta[@property='article:tag']/@content"))
    canonical = doc.xpath("//link[@rel='canonical']/@href") or doc.xpath(
        "//meta[@property='og:url']/@content"
    )
    base = canonical[0].strip() if canonical else base
    return Front(title, date, cats, tags, base)


# ---------------------------------------------------------------- pruning
def _reason(el, rules: HtmlRules) -> str | None:
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag in rules.drop_tags:
        return f"<{tag}>"
    names = (el.get("class") or "").split() + ([el.get("id")] if el.get("id") else [])
    for name, patterns in rules.furniture:
        if any(p.search(n) for n in names for p in patterns):
            return name
    return None


def video_line(src: str) -> str | None:
    for pattern, site in _VIDEO_SRC:
        if m := pattern.match(src or ""):
            if site == "youtube":
                return f"{VIDEO_MARK}https://www.youtube.com/watch?v={m.group(1)}"
            return f"{VIDEO_MARK}https://vimeo.com/{m.group(1)}"
    return None


def prune(doc, rules: HtmlRules | None = None) -> list[tuple[str, str]]:
    """Remove furniture in place; returns (text, reason) for everything removed."""
    rules = rules or html_rules()
    for frame in doc.xpath("//iframe"):
        line = video_line(frame.get("src", "") or frame.get("data-src", ""))
        if line:
            p = lxml.html.Element("p")
            p.text = line
            frame.getparent().replace(frame, p)
        else:
            frame.drop_tree()
    for ol in doc.iter("ol"):
        # Extractors may write every list as <ul>; the number survives as text.
        for n, li in enumerate((c for c in ol if c.tag == "li"), 1):
            li.text = f"{n}. " + (li.text or "")
    removed: list[tuple[str, str]] = []
    for el in list(doc.iter(etree.Comment)):
        el.drop_tree()
    body = doc.find("body")
    # Innermost first, so a share bar inside a <footer> is reported as a share bar.
    for el in reversed(list((body if body is not None else doc).iter())):
        if el is body or el.getparent() is None or not isinstance(el.tag, str):
            continue
        reason = _reason(el, rules)
        if reason is None:
            continue
        text = " ".join(" ".join(t.split()) for t in el.itertext() if t.strip())
        if text:
            removed.append((text, reason))
        el.drop_tree()
    removed.reverse()  # page order for the dry run
    return removed


# ------------------------------------------------------------- extraction
def _trafilatura(html: str, url: str | None) -> str | None:
    import trafilatura

    return trafilatura.extract(
        html,
        url=url,
        output_format="html",
        include_images=True,
        include_links=True,
        include_tables=True,
        include_formatting=True,
        include_comments=False,
        favor_recall=True,
    )


def _readability(html: str, url: str | None) -> str | None:
    from readability import Document

    return Document(html, url=url).summary(html_partial=True)


EXTRACTORS: dict[str, Callable[[str, str | None], str | None]] = {
    "trafilatura": _trafilatura,
    "readability": _readability,
}


# --------------------------------------------------------------- markdown
def _abs(url: str, base: str | None) -> str | None:
    url = (url or "").strip()
    if not url or url.startswith(("data:", "javascript:", "#")):
        return None
    full = urljoin(base or "", url)
    parts = urlsplit(full)
    if parts.scheme == "http":
        full = "https" + full[4:]
    elif parts.scheme not in ("https", "mailto"):
        return None
    return full


def _inline(el, base: str | None) -> str:
    """Markdown of an element's inline content (links, emphasis, code)."""
    out = [_esc_inline(el.text or "")]
    for child in el:
        if not isinstance(child.tag, str):
            out.append(_esc_inline(child.tail or ""))
            continue
        inner = _inline(child, base).strip()
        tag = child.tag
        if tag == "a" and inner:
            href = _abs(child.get("href", ""), base)
            out.append(f"[{inner}]({href})" if href else inner)
        elif tag in ("strong", "b") and inner:
            out.append(f"**{inner}**")
        elif tag in ("em", "i") and inner:
            out.append(f"*{inner}*")
        elif tag == "code" and inner:
            out.append(f"`{inner}`")
        elif tag == "br":
            out.append(" ")
        elif tag != "img":
            out.append(inner)
        out.append(_esc_inline(child.tail or ""))
    return " ".join("".join(out).split())


def _esc_inline(text: str) -> str:
    return re.sub(r"([\\`*_\[\]])", r"\\\1", text)


def _plain(el) -> str:
    return " ".join(el.text_content().split())


def image_block(src: str | None, alt: str | None, base: str | None) -> Block | None:
    url = _abs(src or "", base)
    if not url or not url.startswith("https://"):
        return None
    alt = " ".join((alt or "").split())
    if alt:
        return Block("img", f"![{_esc_inline(alt)}]({url})", "")
    return Block("img", f"![]({url})\n*Caption needed: describe this image.*", "")


def _video_block(text: str) -> Block | None:
    if not text.startswith(VIDEO_MARK):
        return None
    url = text[len(VIDEO_MARK) :].strip()
    m = re.match(r"https://www\.youtube\.com/watch\?v=([\w-]+)$", url)
    if m:
        thumb = f"https://img.youtube.com/vi/{m.group(1)}/hqdefault.jpg"
        return Block("embed", f"[![Watch the video on YouTube]({thumb})]({url})", "")
    if re.match(r"https://vimeo\.com/\d+$", url):
        return Block("embed", f"[\u25b6 Watch the video on Vimeo]({url})", "")
    return None


_NUMBERED = re.compile(r"^\d{1,3}\. ")
_BLOCK_TAGS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "blockquote", "table",
               "figure", "div", "section", "article", "main", "body", "img", "pre", "figcaption",
               "li", "dl", "hr", "html", "span"}


def _images(el, base: str | None) -> list[Block]:
    imgs = [el] if el.tag == "img" else el.iter("img")
    out = []
    for img in imgs:
        src = img.get("src") or ""
        if src.startswith("data:") or not src:
            src = img.get("data-src") or img.get("data-lazy-src") or src
        if b := image_block(src, img.get("alt"), base):
            out.append(b)
    return out


def _table(el) -> Block | None:
    rows = []
    for tr in el.iter("tr"):
        cells = [_plain(c).replace("|", "\\|") for c in tr if c.tag in ("td", "th")]
        if cells:
            rows.append(cells)
    if not rows:
        return None
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return Block("table", "\n".join(md), "\n".join(" | ".join(r) for r in rows))


def _walk(el, base: str | None, out: list[Block]) -> None:
    tag = el.tag if isinstance(el.tag, str) else ""
    if tag in ("h1", "h2", "h3", "h4", "h5", "h6"):
        level = max(2, int(tag[1]))
        if text := _inline(el, base):
            out.append(Block("h", "#" * level + " " + text, _plain(el)))
        return
    if tag in ("ul", "ol"):
        items = [c for c in el if c.tag == "li"]
        # prune() writes an <ol>'s numbers as text, since extractors may turn it into a <ul>.
        numbered = tag == "ol" or (bool(items) and all(_NUMBERED.match(_plain(li)) for li in items))
        for n, li in enumerate(items, 1):
            nested = [c for c in li if c.tag in ("ul", "ol")]
            for c in nested:
                li.remove(c)
            text = _inline(li, base)
            if text and numbered:
                plain = _NUMBERED.sub("", _plain(li))
                out.append(Block("ol", f"{n}. {_NUMBERED.sub('', text)}", plain))
            elif text:
                out.append(Block("ul", f"- {text}", _plain(li)))
            out.extend(_images(li, base))
            for c in nested:
                _walk(c, base, out)
        return
    if tag == "blockquote":
        inner: list[Block] = []
        _children(el, base, inner)
        for b in inner:
            if b.kind in ("p", "h", "ul", "ol"):
                out.append(Block("quote", "> " + (b.md if b.kind == "p" else b.text), b.text))
        return
    if tag == "table":
        if b := _table(el):
            out.append(b)
        return
    if tag == "img":
        out.extend(_images(el, base))
        return
    if tag == "pre":
        out.append(Block("pre", "```\n" + el.text_content().strip("\n") + "\n```", ""))
        return
    if tag in ("p", "figcaption") or tag not in _BLOCK_TAGS:
        text = _plain(el)
        if video := _video_block(text):
            out.append(video)
            return
        out.extend(_images(el, base))
        md = _inline(el, base)
        if md:
            md = f"*{md}*" if tag == "figcaption" else escape_block(md)
            out.append(Block("p", md, text))
        return
    _children(el, base, out)


def _children(el, base: str | None, out: list[Block]) -> None:
    """Block children in order; loose text between them becomes a paragraph."""
    loose: list[str] = []

    def flush() -> None:
        text = " ".join(" ".join(loose).split())
        loose.clear()
        if text:
            out.append(Block("p", escape_block(_esc_inline(text)), text))

    if el.text and el.text.strip():
        loose.append(el.text)
    for child in el:
        if not isinstance(child.tag, str):
            continue
        if child.tag in _BLOCK_TAGS and child.tag != "span":
            flush()
            _walk(child, base, out)
        else:
            loose.append(child.text_content())
        if child.tail and child.tail.strip():
            loose.append(child.tail)
    flush()


def to_blocks(fragment: str, base: str | None) -> list[Block]:
    """Blocks (Markdown + plain text) from an HTML fragment, in document order."""
    if not fragment or not fragment.strip():
        return []
    try:
        root = lxml.html.fragment_fromstring(fragment, create_parent="div")
    except (etree.ParserError, ValueError):
        return []
    out: list[Block] = []
    _children(root, base, out)
    return out


# ------------------------------------------------------------------ pages
def _restore_media(full: list[Block], extracted: list[Block]) -> list[Block]:
    """Put back the images and videos an extractor dropped from inside the article.

    A media block of the whole page goes back after the text block that precedes
    it on the page, when the extractor kept that block; media before any kept
    text (a logo, a banner) stays out.
    """
    have = {b.md for b in extracted if b.kind in ("img", "embed")}
    out = list(extracted)
    anchor = None
    for b in full:
        if b.kind not in ("img", "embed"):
            anchor = b.text if b.text else anchor
            continue
        if b.md in have or anchor is None:
            continue
        at = next((i for i in range(len(out) - 1, -1, -1) if out[i].text == anchor), None)
        if at is not None:
            while at + 1 < len(out) and out[at + 1].kind in ("img", "embed"):
                at += 1
            out.insert(at + 1, b)
            have.add(b.md)
    return out


def parse_page(
    data: bytes,
    source: str,
    *,
    label: str | None = None,
    charset: str | None = None,
    base: str | None = None,
    extractor: str = DEFAULT_EXTRACTOR,
) -> CleanResult:
    """One saved page to a cleaned article; InputError names the page when there is none."""
    label = label or source
    if source.lower().endswith((".mhtml", ".mht")):
        data, charset, base = mhtml_html(data, label)
    doc = parse_document(decode_page(data, charset), label)
    front = read_front(doc, base)
    removed = prune(doc)
    html = lxml.html.tostring(doc, encoding="unicode")
    content = EXTRACTORS[extractor](html, front.base)
    blocks = to_blocks(content or "", front.base)
    title = front.title
    if title is None:
        raise InputError(f"{label}: no discernible article (the page has no title or <h1>)")
    full: list[Block] = []
    _children(doc.find("body") if doc.find("body") is not None else doc, front.base, full)
    blocks = _restore_media(full, [b for b in blocks if not (b.kind == "h" and b.text == title)])
    kept = {b.text for b in blocks}
    removed += [
        (b.text, "not article text (extractor)")
        for b in full
        if b.text and b.text not in kept and b.text != title
    ]
    return clean_blocks(
        blocks,
        title=title,
        source=source,
        label=label,
        date=front.date,
        category=(front.categories or [None])[0],
        tags=front.tags or [],
        removed=removed,
    )


def fragment_article(
    html: str,
    *,
    title: str,
    source: str,
    label: str,
    base: str | None = None,
    date: dt.date | None = None,
    categories: list[str] | None = None,
    tags: list[str] | None = None,
) -> CleanResult:
    """A post's content HTML (WordPress, a feed entry): no extraction, the same rules."""
    return clean_blocks(
        to_blocks(html, base),
        title=title,
        source=source,
        label=label,
        date=date,
        category=(categories or [None])[0],
        tags=tags or [],
    )


def plain_lines(body_md: str) -> list[str]:
    """The reader-visible text of a body, one line per block line (images and videos left out)."""
    out = []
    for line in body_md.split("\n"):
        line = line.strip()
        if not line or line.startswith(("![", "[![", "[\u25b6", "*Caption needed")):
            continue
        if re.fullmatch(r"\|(-+\|)+", line):
            continue
        if line.startswith("|"):
            line = " | ".join(c.strip() for c in line.strip("|").split(" | "))
        line = re.sub(r"^(#{1,6}\s|>\s|-\s|\d+\.\s)", "", line)
        line = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", line)
        line = re.sub(r"(?<!\\)(\*\*|\*|`)", "", line)
        line = re.sub(r"\\(.)", r"\1", line)
        out.append(" ".join(line.split()))
    return out


def score(body_md: str, expected: dict) -> tuple[list[str], list[str]]:
    """How an extraction is judged against a page's expectations (the corpus test and
    bench/extractors.py): (furniture lines left, body paragraphs lost or out of order)."""
    lines = plain_lines(body_md)
    text = "\n".join(lines)
    left = [f for f in expected["furniture"] if f in text]
    lost, pos = [], 0
    for para in expected["body"]:
        at = next((k for k in range(pos, len(lines)) if lines[k] == para), None)
        if at is None:
            lost.append(para)
        else:
            pos = at + 1
    return left, lost
