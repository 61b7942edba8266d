"""Email rendering: MJML compiled once per (template, content), Jinja per recipient.

Why two stages
--------------
Compiling MJML costs ~80 µs and must not happen per recipient; a Jinja render
of the compiled HTML costs ~10 µs.  So:

* **Stage 1 (compile, trusted input only).**  The content's Markdown becomes
  MJML markup (and, separately, plain text) by walking the markdown-it token
  stream.  Jinja renders ``templates/email/<kind>.mjml.j2`` and
  ``<kind>.txt.j2`` with that content and the settings, then ``mjml2html``
  compiles the MJML once.  The result is cached per (settings, kind, content).
* **Stage 2 (per recipient).**  The compiled HTML, the text, the subject and
  the preheader are each turned into a ``jinja2.Template`` once and rendered
  for every recipient.  The HTML template autoescapes, so a first name such as
  ``<script>`` or ``{{ 7*7 }}`` is printed, never interpreted: recipient data is
  only ever a *value*, never template source.

Keeping content literal
-----------------------
Stage-1 output becomes stage-2 template *source*, so anything in it that looks
like Jinja (``{{``, ``{%``, ``{#`` in an article, a setting, MJML's CSS) would
be executed.  Therefore stage-1 templates never write stage-2 Jinja directly:
they ask the ``r`` helper for an opaque alphanumeric *sentinel* (``r.first_name``,
``r.if_("replay_url")``) that survives Markdown and MJML untouched (also inside
``href``).  After compiling, every ``{`` that would open a Jinja tag is
rewritten to the literal ``{{ "{" }}`` and only then are the sentinels replaced
by the real Jinja code.  Content is thus literal by construction.

The personalisation admins may use in Markdown, subjects and preheaders is
the merge tags of :data:`campaigns.merge_tags.ALLOWED` (``{{ first_name }}``,
``{{ name }}``; spaces optional).  Anything else in braces is shown as written
(broadcasts refuse an unknown ``{{ word }}`` before they are stored).  With an empty first name it renders as nothing, so prefer wording
such as "{{ first_name }}, here is part 2" only where the base template's
greeting ("Hi Alex," / "Hello,") is not enough.
"""

from __future__ import annotations

import re
import secrets
import textwrap
import threading
import traceback
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import jinja2
from jinja2 import meta
from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode
from markupsafe import Markup, escape
from mjml import mjml2html

from funnel.errors import ConfigurationError
from funnel.settings import Settings

from . import links as tracking
from . import merge_tags
from .mime import interleave

EMAIL_KINDS = (
    "confirm",
    "series",
    "broadcast",
    "webinar_invite",
    "webinar_confirm",
    "webinar_reminder",
    "webinar_update",
    "webinar_cancel",
    "webinar_followup",
    "webinar_verify",
    "webinar_waitlist",
    "appointment_clinic",
    "appointment_ack",
)
WEBINAR_KINDS = tuple(k for k in EMAIL_KINDS if k.startswith("webinar_"))
#: Kinds that talk about health and so carry the "not medical advice" line.
MEDICAL_KINDS = ("series", "broadcast", *WEBINAR_KINDS)

#: Gmail clips a message body beyond about 102 KB.
CLIP_LIMIT_BYTES = 102_000

#: Where the ``<kind>.mjml.j2`` / ``<kind>.txt.j2`` templates live (a module
#: global so tests can point it at a copy).
TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "email"

MEDICAL_NOTE = (
    "This email shares general information about back health. It is not medical advice "
    "and cannot replace an assessment: for your own symptoms, please see a physiotherapist, "
    "doctor or other clinician."
)

# --------------------------------------------------------------- recipients
ALWAYS_KEYS = ("first_name", "email", "unsubscribe_url", "preferences_url", "view_url", "reason")
WEBINAR_KEYS = (
    "register_url",
    "join_url",
    "webinar_title",
    "webinar_when",
    "webinar_tz",
    "google_calendar_url",
    "outlook_url",
    "replay_url",
    "offer_url",
    "offer_text",
)
#: An appointment request's values (campaigns/appointments.py), printed by the
#: clinic's notification and the requester's acknowledgement.
APPOINTMENT_KEYS = (
    "appt_id", "appt_name", "appt_email", "appt_phone", "appt_method", "appt_contact",
    "appt_times", "appt_reason", "appt_newsletter", "appt_received", "appt_promise",
)  # fmt: skip
#: Recipient values a template may use but a recipient need not have.
OPTIONAL_KEYS = ("webinar_url", "webinar_title", "webinar_when", "programme_url")
#: Stage-2 condition under which a ``webinar`` CTA is shown: the builder found
#: an open webinar (campaigns.webinars.cta_recipient) when the email was built.
WEBINAR_CTA_IF = 'webinar_url | default("")'
#: The same for a ``programme`` CTA without ``programme_url``: the builder gave
#: the reader's own start link (campaigns.course.programme_cta).
PROGRAMME_CTA_IF = 'programme_url | default("")'


def recipient_keys(kind: str) -> tuple[str, ...]:
    """The per-recipient values an email of ``kind`` needs (see the interfaces contract)."""
    if kind == "confirm":
        return (*ALWAYS_KEYS, "confirm_url")
    if kind == "webinar_verify":
        return (*ALWAYS_KEYS, *WEBINAR_KEYS, "verify_url")
    if kind in WEBINAR_KINDS:
        return ALWAYS_KEYS + WEBINAR_KEYS
    if kind.startswith("appointment_"):
        return ALWAYS_KEYS + APPOINTMENT_KEYS
    return ALWAYS_KEYS


class RenderError(ConfigurationError):
    """An email cannot be built: template error, CTA without a URL, clip limit exceeded...

    A configuration error, never the recipient's: a row that hits it is held
    in the outbox until the settings or content change (campaigns/sender.py).
    """


@dataclass(frozen=True)
class Rendered:
    subject: str
    preheader: str
    html: str
    text: str
    #: the message's tracked links (campaigns/links.py), empty when untracked
    links: tuple = ()
    #: (static segments, rendered islands) of the text and of the HTML when
    #: the compiled email could be cut at its per-recipient values (:class:`Splice`):
    #: ``text`` is the segments and islands interleaved.  mime.py then encodes
    #: the static segments once per content.  None: only the full strings.
    text_splice: tuple | None = None
    html_splice: tuple | None = None


# ------------------------------------------------------------ sentinels
# A per-process random part makes sentinels impossible to forge from content;
# even a forged one could only produce code a template registered.
_NONCE = secrets.token_hex(5)
_SENTINEL_RE = re.compile(rf"zq{_NONCE}x(\d+)qz")
_JINJA_OPEN_RE = re.compile(r"\{(?=[{%#])")
_MERGE_TAG_RE = re.compile(r"\{\{\s*(" + "|".join(merge_tags.ALLOWED) + r")\s*\}\}")


def _neutralise(text: str) -> str:
    """Make ``text`` print literally when used as Jinja source.

    Only a ``{`` followed by ``{``, ``%`` or ``#`` can open a Jinja tag; it is
    replaced by an expression printing ``{`` (which Jinja constant-folds, so it
    costs nothing per render).
    """
    return _JINJA_OPEN_RE.sub('{{ "{" }}', text)


class _UnknownValue(Exception):
    def __init__(self, name: str, kind: str):
        super().__init__(name)
        self.name = name
        self.kind = kind


class _Stage2:
    """The ``r`` object stage-1 templates use to leave stage-2 Jinja behind.

    ``{{ r.first_name }}`` → ``{{ first_name }}``; ``{{ r.expr("a | default(b)") }}``;
    ``{{ r.if_("replay_url") }}`` / ``{{ r.else_() }}`` / ``{{ r.endif() }}``.
    Statements placed between MJML components must be wrapped in ``<mj-raw>``.
    """

    def __init__(self, kind: str):
        self._kind = kind
        self._allowed = frozenset(recipient_keys(kind) + OPTIONAL_KEYS)
        self._codes: list[str] = []
        self._ids: dict[str, int] = {}

    def _token(self, code: str) -> Markup:
        i = self._ids.get(code)
        if i is None:
            i = self._ids[code] = len(self._codes)
            self._codes.append(code)
        return Markup(f"zq{_NONCE}x{i}qz")

    def __getattr__(self, name: str) -> Markup:
        if name.startswith("_") or name.startswith("jinja"):
            raise AttributeError(name)
        if name not in self._allowed:
            raise _UnknownValue(name, self._kind)
        return self._token("{{ " + name + " }}")

    def expr(self, code: str) -> Markup:
        return self._token("{{ " + code + " }}")

    def if_(self, condition: str) -> Markup:
        return self._token("{% if " + condition + " %}")

    def else_(self) -> Markup:
        return self._token("{% else %}")

    def endif(self) -> Markup:
        return self._token("{% endif %}")

    def personalise(self, text: str) -> str:
        """Turn the allowed merge tags (campaigns/merge_tags.py) in content into sentinels."""
        return _MERGE_TAG_RE.sub(
            lambda m: str(getattr(self, merge_tags.ALLOWED[m.group(1)][0])), text
        )

    def to_jinja(self, text: str) -> str:
        """Stage-1 output → stage-2 source: everything literal except the sentinels."""
        codes = self._codes

        def code(m: re.Match) -> str:
            i = int(m.group(1))
            return codes[i] if i < len(codes) else m.group(0)

        return _SENTINEL_RE.sub(code, _neutralise(text))


# ------------------------------------------------------------ markdown
_MD = MarkdownIt("commonmark", {"html": False, "xhtmlOut": True}).enable(["table", "strikethrough"])

_INK = "#17323a"
_ACCENT = "#1d6f6b"
_STYLES = {
    "h1": f"margin:4px 0 16px;font-size:26px;line-height:1.3;color:{_INK};",
    "h2": f"margin:24px 0 12px;font-size:22px;line-height:1.3;color:{_INK};",
    "h3": f"margin:20px 0 10px;font-size:19px;line-height:1.35;color:{_INK};",
    "h4": f"margin:16px 0 8px;font-size:17px;line-height:1.4;color:{_INK};",
    "h5": f"margin:16px 0 8px;font-size:17px;line-height:1.4;color:{_INK};",
    "h6": f"margin:16px 0 8px;font-size:17px;line-height:1.4;color:{_INK};",
    "p": "margin:0 0 16px;",
    "ul": "margin:0 0 16px;padding-left:24px;",
    "ol": "margin:0 0 16px;padding-left:24px;",
    "li": "margin:0 0 6px;",
    "blockquote": "margin:0 0 16px;padding:2px 0 2px 16px;border-left:4px solid #b9d6d2;"
    "color:#33434d;",
    "a": f"color:{_ACCENT};text-decoration:underline;",
    "img": "max-width:100%;height:auto;",
    "code": "font-family:Menlo,Consolas,monospace;font-size:15px;background:#eef3f2;",
    "table": "border-collapse:collapse;margin:0 0 16px;width:100%;",
    "th": "border:1px solid #d5e2e0;padding:6px 8px;text-align:left;background:#eef3f2;",
    "td": "border:1px solid #d5e2e0;padding:6px 8px;",
}
_PRE_STYLE = (
    "margin:0 0 16px;padding:12px;background:#eef3f2;white-space:pre-wrap;"
    "font-family:Menlo,Consolas,monospace;font-size:15px;"
)


def _add_styles(tokens) -> None:
    """Inline styles on opening tags: many mail clients ignore <style> blocks."""
    for tok in tokens:
        if tok.nesting >= 0 and tok.tag in _STYLES and tok.type != "code_block":
            own = str(tok.attrGet("style") or "")  # e.g. table cell alignment
            tok.attrSet("style", (own.rstrip(";") + ";" if own else "") + _STYLES[tok.tag])
        if tok.children:
            _add_styles(tok.children)


def _parse(body_md: str, base_url: str = ""):
    """Tokens for ``body_md``; site-relative links and images ("/x") made absolute,
    since an email has no page address to resolve them against."""
    tokens = _MD.parse(body_md)
    if base_url:
        base = base_url.rstrip("/")
        stack = list(tokens)
        while stack:
            tok = stack.pop()
            for attr in ("href", "src"):
                value = tok.attrGet(attr)
                if isinstance(value, str) and value.startswith("/") and not value.startswith("//"):
                    tok.attrSet(attr, base + value)
            stack.extend(tok.children or ())
    return tokens


def _inline_text(node: SyntaxTreeNode) -> str:
    """Plain text of inline nodes: emphasis dropped, links as "text (url)"."""
    out = []
    for child in node.children:
        t = child.type
        if t in ("text", "code_inline"):
            out.append(child.content)
        elif t == "softbreak":
            out.append(" ")
        elif t == "hardbreak":
            out.append("\n")
        elif t == "link":
            label = _inline_text(child)
            href = str(child.attrs.get("href", ""))
            out.append(href if label.strip() in ("", href) else f"{label} ({href})")
        elif t == "image":
            alt = _inline_text(child)
            out.append(f"[{alt}]" if alt else "")
        else:  # em, strong, s, inline
            out.append(_inline_text(child))
    return "".join(out)


def _wrap(text: str, width: int) -> str:
    return "\n".join(
        textwrap.fill(line, max(width, 20), break_long_words=False, break_on_hyphens=False)
        for line in text.split("\n")
    )


def _text_block(node: SyntaxTreeNode, width: int) -> str:
    t = node.type
    if t == "paragraph":
        return _wrap(_inline_text(node.children[0]), width)
    if t == "heading":
        title = " ".join(_inline_text(node.children[0]).split())
        if node.tag == "h1":
            return f"{title}\n{'=' * len(title)}"
        if node.tag == "h2":
            return f"{title}\n{'-' * len(title)}"
        return title.upper()
    if t in ("bullet_list", "ordered_list"):
        start = int(node.attrs.get("start", 1)) if t == "ordered_list" else 1
        items = []
        for n, item in enumerate(node.children, start):
            marker = f"{n}. " if t == "ordered_list" else "- "
            inner = _text_blocks(item.children, width - len(marker), tight=True)
            lines = inner.split("\n")
            pad = " " * len(marker)
            items.append(
                "\n".join([marker + lines[0]] + [pad + ln if ln else "" for ln in lines[1:]])
            )
        return "\n".join(items)
    if t == "blockquote":
        inner = _text_blocks(node.children, width - 2)
        return "\n".join(("> " + ln) if ln else ">" for ln in inner.split("\n"))
    if t in ("fence", "code_block"):
        return "\n".join("    " + ln for ln in node.content.rstrip("\n").split("\n"))
    if t == "hr":
        return "* * *"
    if t == "table":
        rows = []
        for section in node.children:
            for row in section.children:
                rows.append(
                    " | ".join(
                        _inline_text(c.children[0]) if c.children else "" for c in row.children
                    )
                )
        return "\n".join(rows)
    return _wrap(_inline_text(node), width) if node.children else node.content


def _text_blocks(nodes, width: int, tight: bool = False) -> str:
    sep = "\n" if tight else "\n\n"
    return sep.join(b for b in (_text_block(n, width) for n in nodes) if b)


def markdown_to_text(body_md: str, width: int = 72, base_url: str = "") -> str:
    """Plain text from Markdown (headings underlined, "- " lists, "text (url)" links)."""
    return _text_blocks(SyntaxTreeNode(_parse(body_md, base_url)).children, width)


def _lone_image(node: SyntaxTreeNode) -> tuple[SyntaxTreeNode, str] | None:
    """A paragraph holding only an image (maybe linked) becomes an <mj-image>."""
    if node.type != "paragraph":
        return None
    kids = node.children[0].children
    if len(kids) != 1:
        return None
    if kids[0].type == "image":
        return kids[0], ""
    if (
        kids[0].type == "link"
        and len(kids[0].children) == 1
        and kids[0].children[0].type == "image"
    ):
        return kids[0].children[0], str(kids[0].attrs.get("href", ""))
    return None


def markdown_to_mjml(body_md: str, base_url: str = "") -> str:
    """MJML components for the Markdown body, to sit inside an <mj-column>.

    Runs of paragraphs, headings, lists, quotes and tables share one <mj-text>
    (each MJML component costs ~500 bytes of table markup); images become
    <mj-image> and rules <mj-divider>.  markdown-it escapes text and refuses
    raw HTML, so the result is well-formed and holds no author HTML.
    """
    tokens = _parse(body_md, base_url)
    _add_styles(tokens)
    parts: list[str] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            parts.append("<mj-text>\n" + "".join(buf).strip() + "\n</mj-text>")
            buf.clear()

    for node in SyntaxTreeNode(tokens).children:
        image = _lone_image(node)
        if node.type == "hr":
            flush()
            parts.append('<mj-divider border-width="1px" border-color="#d5e2e0" />')
        elif image:
            flush()
            img, href = image
            attrs = f' href="{escape(href)}"' if href else ""
            parts.append(
                f'<mj-image src="{escape(img.attrs.get("src", ""))}" '
                f'alt="{escape(_inline_text(img))}"{attrs} padding="8px 24px 16px" />'
            )
        elif node.type in ("fence", "code_block"):
            buf.append(f'<pre style="{_PRE_STYLE}">{escape(node.content)}</pre>\n')
        else:
            buf.append(_MD.renderer.render(node.to_tokens(), _MD.options, {}))
    flush()
    return "\n".join(parts)


# ------------------------------------------------------------ CTAs
CTA_DEFAULT_TEXT = {
    "webinar": "Reserve my spot",
    "appointment": "Book an appointment",
    "programme": "Start the 28-day programme",
    "newsletter": "Get the weekly back-care emails",
}


def _cta_links(settings: Settings, ctas: Sequence[Mapping], r: _Stage2) -> list[dict]:
    """Resolve each CTA to button text and a link (a sentinel or a trusted URL)."""
    out = []
    for i, cta in enumerate(ctas):
        kind = str(cta.get("kind") or "").strip()
        if kind not in CTA_DEFAULT_TEXT:
            raise RenderError(
                f"ctas[{i}].kind: unknown CTA kind {kind!r}; expected one of "
                f"{', '.join(CTA_DEFAULT_TEXT)}"
            )
        if kind == "webinar":
            # Resolved per recipient at build time; without an open webinar the
            # templates leave the block out (see WEBINAR_CTA_IF).
            href: str = r.webinar_url
        elif kind == "newsletter":
            href = settings.url("/")
        elif kind == "appointment":
            href = settings.appointment_link  # our own /appointment unless appointment_url is set
        elif settings.programme_url:
            href = settings.programme_url  # a programme the clinic sells elsewhere
        else:
            href = r.programme_url  # the reader's own start link, chosen at build time
        text = " ".join(str(cta.get("text") or "").split()) or CTA_DEFAULT_TEXT[kind]
        show_if = WEBINAR_CTA_IF if kind == "webinar" else None
        if kind == "programme" and not settings.programme_url:
            show_if = PROGRAMME_CTA_IF
        out.append({"kind": kind, "text": text, "href": href, "show_if": show_if})
    return out


# ------------------------------------------------------------ environments
def _none_as_empty(value):
    return "" if value is None else value


def _one_line(value):
    """Subjects and preheaders: a recipient's newline must not break the header."""
    return " ".join(str(_none_as_empty(value)).split())


def _stage2_env(strict: bool, autoescape: bool, finalize=_none_as_empty) -> jinja2.Environment:
    return jinja2.Environment(
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined if strict else jinja2.Undefined,
        keep_trailing_newline=True,
        finalize=finalize,
    )


_STAGE2 = {
    (strict, part): _stage2_env(
        strict, part == "html", _one_line if part == "line" else _none_as_empty
    )
    for strict in (False, True)
    for part in ("html", "text", "line")
}

_stage1_envs: dict[tuple[Path, bool], jinja2.Environment] = {}


def _unknown_reason(key: str) -> str:
    raise ValueError(f"reason.txt.j2: no footer reason {key!r}")


@lru_cache(maxsize=256)
def _footer_reason(template_dir: Path, key: str, site_name: str, title: str) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir),
                             undefined=jinja2.StrictUndefined, autoescape=False)
    return env.get_template("reason.txt.j2").render(
        key=key, site_name=site_name, title=title, unknown_reason=_unknown_reason
    )


def footer_reason(key: str, site_name: str, title: str = "") -> str:
    """The footer's "why you are getting this" sentence for variant ``key``.

    The sentences live in templates/email/reason.txt.j2 only; the result is the
    recipient's ``r.reason`` (plain text: stage 2 escapes it for HTML).
    """
    return _footer_reason(TEMPLATE_DIR, key, site_name, title)



def _stage1_env(strict: bool) -> jinja2.Environment:
    key = (TEMPLATE_DIR, strict)
    env = _stage1_envs.get(key)
    if env is None:
        env = _stage1_envs[key] = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("mjml.j2",), default_for_string=False, default=False
            ),
            undefined=jinja2.StrictUndefined if strict else jinja2.Undefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
    return env


def _template_location(exc: BaseException, fallback: str) -> str:
    """ "series.mjml.j2:12" from a Jinja traceback (Jinja maps frames to template lines)."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2"):
            return f"{Path(frame.filename).name}:{frame.lineno}"
    return fallback


def _render_stage1(name: str, context: dict, strict: bool) -> str:
    try:
        return _stage1_env(strict).get_template(name).render(context)
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(f"{exc.name or name}:{exc.lineno}: {exc.message}") from exc
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"{TEMPLATE_DIR / exc.name}: template not found") from exc
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{_template_location(exc, name)}: {exc.message}") from exc
    except _UnknownValue as exc:
        raise RenderError(
            f"{_template_location(exc, name)}: r.{exc.name} is not a recipient value of "
            f"{exc.kind} emails (known: {', '.join(recipient_keys(exc.kind) + OPTIONAL_KEYS)})"
        ) from exc


# ------------------------------------------------------------ MJML
_mjml_compiles = 0


@lru_cache(maxsize=256)
def _mjml_to_html(source: str) -> str:
    """The expensive step, cached on the exact MJML source."""
    global _mjml_compiles
    _mjml_compiles += 1
    return mjml2html(source, disable_comments=True, fonts={})


# ------------------------------------------------------------ compiled email
_UNDEFINED_NAME_RE = re.compile(r"'([^']+)' is undefined")


# ------------------------------------------------------------ splicing
#: Any stage-2 tag, or the start of a comment (which makes a part not spliceable).
_TAG_RE = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#", re.DOTALL)
#: What _neutralise leaves for a literal "{": static, not a per-recipient island.
_LITERAL_BRACE = '{{ "{" }}'
#: Joins the islands in the one template that renders them (one Jinja pass a
#: part).  A NUL and the per-process nonce: no recipient value can hold it,
#: and render() checks the count anyway.
_ISLAND_SEP = f"\x00{_NONCE}\x00"


def _run(template, ctx: dict) -> str:
    """Render a compiled template with *ctx* shared, not copied (Template.render()
    copies the context and merges Jinja's globals on every call; the templates
    never assign, so one context built per message serves every part)."""
    return "".join(template.root_render_func(template.new_context(ctx, shared=True)))


class Splice:
    """A stage-2 part cut at its per-recipient islands.

    An island is a top-level ``{{ ... }}`` or a whole ``{% if %}...{% endif %}``
    block; what lies between islands is literal text (``keep_trailing_newline``
    is on and no tag trims whitespace), so rendering the islands alone and
    interleaving them with the static segments gives exactly the full render.
    :func:`_splice` returns None for anything else (comments, other
    statements, whitespace control), and ``_compile`` checks the equality on
    sample recipients; then the part is rendered whole, as before.
    """

    __slots__ = ("islands", "static", "template")

    def __init__(self, static: tuple[str, ...], islands: tuple[str, ...], template):
        self.static = static
        self.islands = islands
        self.template = template

    def render(self, ctx: dict) -> tuple[str, ...] | None:
        out = _run(self.template, ctx).split(_ISLAND_SEP)
        return tuple(out) if len(out) == len(self.islands) else None


def _splice(env: jinja2.Environment, source: str) -> Splice | None:
    """*source* cut at its islands (see :class:`Splice`), or None when it cannot be."""
    static: list[str] = []
    islands: list[str] = []
    text: list[str] = []
    pos = depth = start = 0
    for m in _TAG_RE.finditer(source):
        tag = m.group(0)
        if tag == "{#" or tag[2:3] in "-+" or tag[-3:-2] in "-+":
            return None
        if tag.startswith("{%"):
            word = (tag[2:-2].split() or [""])[0]
            if word == "if":
                if depth == 0:
                    text.append(source[pos : m.start()])
                    start = m.start()
                depth += 1
            elif word in ("elif", "else") and depth:
                continue
            elif word == "endif" and depth:
                depth -= 1
                if depth == 0:
                    static.append("".join(text))
                    text = []
                    islands.append(source[start : m.end()])
                    pos = m.end()
            else:
                return None
        elif depth == 0:
            text.append(source[pos : m.start()])
            if tag == _LITERAL_BRACE:
                text.append("{")
            else:
                static.append("".join(text))
                text = []
                islands.append(tag)
            pos = m.end()
    if depth or not islands:
        return None
    text.append(source[pos:])
    static.append("".join(text))
    return Splice(tuple(static), tuple(islands), env.from_string(_ISLAND_SEP.join(islands)))


class CompiledEmail:
    """One email compiled for given content; :meth:`render` personalises it."""

    def __init__(
        self,
        kind: str,
        subject: jinja2.Template,
        preheader: jinja2.Template,
        html: jinja2.Template,
        text: jinja2.Template,
        *,
        constants: Mapping[str, str],
        mjml: str,
        html_source: str,
        text_source: str,
        links: tuple = (),
    ):
        self.kind = kind
        self._parts = (subject, preheader, html, text)
        self._constants = dict(constants)
        #: The stage-1 MJML (for the known-tag check and debugging).
        self.mjml = mjml
        #: The stage-2 Jinja sources (compiled HTML / text with placeholders).
        self.html_source = html_source
        self.text_source = text_source
        #: The links behind ``{{ click_url }}N`` (campaigns/links.py); empty when untracked.
        self.links = links
        #: The html and text parts cut at their islands, when they can be (set by _compile).
        self.splices: tuple[Splice | None, Splice | None] = (None, None)

    def render(self, recipient: Mapping[str, object]) -> Rendered:
        # Template.render() copies the context and merges Jinja's globals for
        # each of the four parts, which was ~60% of the per-recipient cost.
        # Build the context once and share it (the templates never assign).
        ctx = {**recipient, **self._constants}
        try:
            return self._render(ctx)
        except jinja2.UndefinedError as exc:
            m = _UNDEFINED_NAME_RE.search(exc.message or "")
            name = m.group(1) if m else exc.message
            raise RenderError(
                f"{self.kind}.mjml.j2: the recipient value {name!r} is missing "
                f"(a {self.kind} email needs {', '.join(recipient_keys(self.kind))})"
            ) from None

    def _render(self, ctx: dict) -> Rendered:
        parts = []
        cut: list[tuple | None] = []
        for t, splice in zip(self._parts[2:], self.splices, strict=True):
            islands = splice.render(ctx) if splice is not None else None
            if islands is None:  # not spliceable, or a value held the separator
                parts.append(_run(t, ctx))
                cut.append(None)
            else:
                parts.append(interleave(splice.static, islands))
                cut.append((splice.static, islands))
        subject, preheader = (_run(t, ctx) for t in self._parts[:2])
        return Rendered(subject, preheader, parts[0], parts[1], self.links, cut[1], cut[0])

    def __repr__(self) -> str:
        return f"<CompiledEmail {self.kind}>"


_RESERVED = frozenset(
    {
        "r",
        "kind",
        "subject",
        "preheader",
        "body_mjml",
        "body_text",
        "ctas",
        "medical",
        "medical_note",
    }
)


def _default_body(kind: str, extra: Mapping) -> str:
    if kind in ("series", "broadcast"):
        raise RenderError(f"{kind} email: body_md is empty; a {kind} email needs Markdown content")
    name = kind
    if kind == "webinar_followup":
        name = "webinar_followup_attended" if extra["attended"] else "webinar_followup_missed"
    path = TEMPLATE_DIR / f"{name}.default.md"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RenderError(f"{path}: cannot read the default body ({exc.strerror})") from exc


def _check_kind(kind: str, extra: Mapping) -> None:
    """A known kind, no reserved names in ``extra``, and what the kind itself requires."""
    if kind not in EMAIL_KINDS:
        raise RenderError(f"unknown email kind {kind!r}; expected one of {', '.join(EMAIL_KINDS)}")
    clash = sorted(_RESERVED & set(extra))
    if clash:
        raise RenderError(f"extra[{clash[0]!r}]: this name is reserved by the email templates")
    if kind == "webinar_followup" and not isinstance(extra.get("attended"), bool):
        raise RenderError(
            "webinar_followup email: extra['attended'] must be True (thank-you and offer) "
            "or False (replay for those who missed it)"
        )


def _stage2_templates(kind: str, sources: Mapping[str, str], strict: bool,
                      constants: Mapping, track: bool = False, pixel: bool = False) -> dict:
    """Each compiled part parsed as a per-recipient Jinja template; only recipient values allowed."""
    allowed = set(recipient_keys(kind) + OPTIONAL_KEYS) | set(constants)
    if track:
        allowed.add(tracking.CLICK_KEY)
    if pixel:
        allowed.add(tracking.OPEN_KEY)
    templates = {}
    for part, source in sources.items():
        env = _STAGE2[(strict, {"html": "html", "text": "text"}.get(part, "line"))]
        try:
            parsed = env.parse(source)
            unknown = sorted(meta.find_undeclared_variables(parsed) - allowed)
            templates[part] = env.from_string(parsed)  # reuse the AST
        except jinja2.TemplateSyntaxError as exc:
            raise RenderError(
                f"{kind}.mjml.j2: the compiled {part} is not valid Jinja ({exc})"
            ) from exc
        if unknown:
            raise RenderError(
                f"{kind} email: the {part} uses {unknown[0]!r}, which is not a recipient value "
                f"of {kind} emails"
            )
    return templates


def _compile(
    settings: Settings,
    kind: str,
    subject: str,
    preheader: str,
    body_md: str,
    ctas: Sequence[Mapping],
    extra: Mapping,
    strict: bool,
    track: bool = False,
    pixel: bool = False,
) -> CompiledEmail:
    _check_kind(kind, extra)
    r = _Stage2(kind)
    if not body_md.strip():
        body_md = _default_body(kind, extra)
    body = r.personalise(body_md)
    subject_s = r.personalise(" ".join(subject.split()))
    preheader_s = r.personalise(" ".join(preheader.split()))
    context = {
        "site_name": settings.site_name,
        "postal_address": settings.postal_address,
        "base_url": settings.base_url,
        "greeting": True,
        "part": None,
        "series_title": "",
        "attended": None,
        **extra,
        "r": r,
        "kind": kind,
        "subject": subject_s,
        "preheader": preheader_s,
        "ctas": _cta_links(settings, ctas, r),
        "medical": kind in MEDICAL_KINDS,
        "medical_note": MEDICAL_NOTE,
    }
    mjml_src = _render_stage1(
        f"{kind}.mjml.j2",
        {**context, "body_mjml": Markup(markdown_to_mjml(body, settings.base_url))},
        strict,
    )
    text_src = _render_stage1(
        f"{kind}.txt.j2",
        {**context, "body_text": markdown_to_text(body, base_url=settings.base_url)},
        strict,
    )
    try:
        html = _mjml_to_html(mjml_src)
    except Exception as exc:  # the Rust binding raises plain exceptions
        raise RenderError(f"{kind}.mjml.j2: MJML did not compile ({exc})") from exc

    text = re.sub(r"[ \t]+\n", "\n", text_src)
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"
    sources = {
        "html": r.to_jinja(html),
        "text": r.to_jinja(text),
        "subject": r.to_jinja(subject_s),
        "preheader": r.to_jinja(preheader_s),
    }
    links: tuple = ()
    if track:
        tracked = tracking.track(sources["html"], sources["text"])
        sources["html"], sources["text"], links = tracked.html, tracked.text, tracked.links
    if pixel:
        sources["html"] = tracking.with_pixel(sources["html"])
    constants: dict = {}
    templates = _stage2_templates(kind, sources, strict, constants, track, pixel)
    compiled = CompiledEmail(
        kind,
        templates["subject"],
        templates["preheader"],
        templates["html"],
        templates["text"],
        constants=constants,
        mjml=mjml_src,
        html_source=sources["html"],
        text_source=sources["text"],
        links=links,
    )
    compiled.splices = _splices(compiled, settings, kind, strict, sources)
    size = len(compiled.render(_long_sample(settings, kind)).html.encode("utf-8"))
    if size > CLIP_LIMIT_BYTES:
        raise RenderError(
            f"{kind} email {subject!r}: the HTML is {size:,} bytes with a sample recipient, over "
            f"Gmail's clipping limit of {CLIP_LIMIT_BYTES:,} bytes; shorten the body"
        )
    return compiled


def _splices(compiled: CompiledEmail, settings: Settings, kind: str, strict: bool,
             sources: Mapping[str, str]) -> tuple[Splice | None, Splice | None]:
    """The html and text parts cut at their islands, each kept only if the cut
    renders exactly what the whole template does for two sample recipients."""
    out = []
    samples = [sample_recipient(settings, kind), _long_sample(settings, kind)]
    for i, part in enumerate(("html", "text")):
        splice = _splice(_STAGE2[(strict, part)], sources[part])
        template = compiled._parts[2 + i]
        for sample in samples if splice is not None else ():
            ctx = {**sample, tracking.CLICK_KEY: "c/", tracking.OPEN_KEY: "px/",
                   **compiled._constants}  # fmt: skip
            islands = splice.render(ctx)
            whole = _run(template, ctx)
            if islands is None or interleave(splice.static, islands) != whole:
                splice = None
                break
        out.append(splice)
    return out[0], out[1]


# ------------------------------------------------------------ cache
def _freeze(value):
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


class CacheInfo(NamedTuple):
    hits: int
    misses: int
    mjml_compiles: int
    size: int


_CACHE_MAX = 256
_cache: OrderedDict[tuple, CompiledEmail] = OrderedDict()
_cache_lock = threading.Lock()
_hits = 0
_misses = 0


def compile_email(
    settings: Settings,
    kind: str,
    *,
    subject: str,
    preheader: str = "",
    body_md: str = "",
    ctas: Sequence[Mapping] = (),
    extra: Mapping | None = None,
    strict: bool = False,
    track: bool = False,
    pixel: bool = False,
) -> CompiledEmail:
    """Compile ``kind`` with this content (stage 1), cached; see the module docstring.

    ``extra`` holds trusted compile-time values: ``part`` / ``series_title``
    (series), ``attended`` (required bool for webinar_followup), ``greeting``
    (False drops "Hi Alex,"), or overrides of ``site_name`` / ``postal_address``.
    ``strict`` uses StrictUndefined in both stages (tests, previews).
    ``track`` sends the links through ``/c/`` (campaigns/links.py): the
    recipient then needs a ``click_url``; ``pixel`` adds the opens image
    (``open_url``).
    """
    global _hits, _misses
    extra = dict(extra or {})
    key = (
        str(TEMPLATE_DIR),
        settings.site_name,
        settings.postal_address,
        settings.base_url,
        settings.appointment_link,
        settings.programme_url,
        kind,
        subject,
        preheader,
        body_md,
        _freeze(list(ctas)),
        _freeze(extra),
        bool(strict),
        bool(track),
        bool(pixel),
    )
    with _cache_lock:
        found = _cache.get(key)
        if found is not None:
            _cache.move_to_end(key)
            _hits += 1
            return found
        _misses += 1
    compiled = _compile(settings, kind, subject, preheader, body_md, ctas, extra, strict, track,
                        pixel)
    with _cache_lock:
        _cache[key] = compiled
        while len(_cache) > _CACHE_MAX:
            _cache.popitem(last=False)
    return compiled


def cache_info() -> CacheInfo:
    """Hit/miss counters of :func:`compile_email` and how often MJML really ran."""
    return CacheInfo(_hits, _misses, _mjml_compiles, len(_cache))


def clear_cache() -> None:
    global _hits, _misses, _mjml_compiles
    with _cache_lock:
        _cache.clear()
        _hits = _misses = _mjml_compiles = 0
    _mjml_to_html.cache_clear()


# ------------------------------------------------------------ samples
def sample_recipient(settings: Settings, kind: str = "series") -> dict:
    """A complete, plausible recipient context for previews and strict tests."""
    r = {
        "first_name": "Alex",
        "email": "alex@example.com",
        "unsubscribe_url": settings.url("/u/sample-token"),
        "preferences_url": settings.url("/p/sample-token"),
        "view_url": settings.url("/m/sample-token"),
        "reason": footer_reason("signed_up", settings.site_name),
        tracking.CLICK_KEY: settings.url("/c/sample-token."),
        tracking.OPEN_KEY: settings.url("/px/sample-token"),
    }
    if kind == "confirm":
        r["confirm_url"] = settings.url("/confirm/sample-token")
        r["reason"] = footer_reason("entered_on_form", settings.site_name)
    if kind not in WEBINAR_KINDS and kind != "confirm":
        # A webinar CTA as it looks when an open webinar was found at build time,
        # and a programme CTA with the reader's own start link.
        r.update(
            webinar_url=settings.url("/w/sample-webinar?t=sample-token"),
            programme_url=settings.url("/programme/start/sample-token"),
            webinar_title="Spine Health Webinar",
            webinar_when="Tuesday 3 March 2026, 7:00 pm GMT",
        )
    if kind in WEBINAR_KINDS:
        r.update(
            register_url=settings.url("/w/spine-health/register/sample-token"),
            join_url=settings.url("/w/spine-health/join/sample-token"),
            webinar_title="Spine Health Webinar",
            webinar_when="Tuesday 3 March 2026, 7:00 pm GMT",
            webinar_tz="Europe/London",
            google_calendar_url="https://calendar.google.com/calendar/render?action=TEMPLATE"
            "&text=Spine+Health+Webinar&dates=20260303T190000Z/20260303T200000Z",
            outlook_url="https://outlook.live.com/calendar/0/deeplink/compose?subject="
            "Spine+Health+Webinar&startdt=2026-03-03T19:00:00Z&enddt=2026-03-03T20:00:00Z",
            replay_url=settings.url("/w/spine-health/replay/sample-token"),
            offer_url=settings.url("/offer/sample-token"),
            offer_text="Book a discounted assessment",
        )
    if kind == "webinar_verify":
        r["verify_url"] = settings.url("/w/spine-health/verify/sample-token")
    if kind.startswith("appointment_"):
        r.update(
            appt_id="17", appt_name="Alex Morgan", appt_email="alex@example.com",
            appt_phone="07700 900123", appt_method="a phone call", appt_contact="07700 900123",
            appt_times="Weekday mornings, Saturday mornings",
            appt_reason="Lower back pain after gardening, two weeks now.\nWorse in the mornings.",
            appt_newsletter="no", appt_received="Saturday 21 November 2026, 10:00 (Europe/London)",
            appt_promise="within one working day",
        )  # fmt: skip
    return r


def _long_sample(settings: Settings, kind: str) -> dict:
    """The sample recipient with long-ish values, for the clip-limit check."""
    token = "x" * 160
    r = sample_recipient(settings, kind)
    for key, value in r.items():
        if key.endswith("_url"):
            r[key] = f"{value}{token}"
    r["first_name"] = "Maximiliana-Josephine Alexandrova"
    r["email"] = "maximiliana.josephine.alexandrova@a-rather-long-example-domain.example"
    return r


__all__ = [
    "EMAIL_KINDS",
    "MEDICAL_NOTE",
    "CLIP_LIMIT_BYTES",
    "CompiledEmail",
    "Rendered",
    "RenderError",
    "Splice",
    "cache_info",
    "clear_cache",
    "compile_email",
    "markdown_to_mjml",
    "markdown_to_text",
    "recipient_keys",
    "sample_recipient",
]
