"""campaigns/render.py: MJML compiled once per content, Jinja per recipient."""

from __future__ import annotations

import re
import shutil
from html.parser import HTMLParser

import pytest

from campaigns import render
from campaigns.render import (
    EMAIL_KINDS,
    MEDICAL_NOTE,
    RenderError,
    compile_email,
    sample_recipient,
)
from funnel.errors import FunnelError
from funnel.settings import test_settings

ARTICLE = """# Moving helps your back

Gentle, regular exercise is one of the best things for *most* back pain.
Read [our guide](https://clinic.example/guide?a=1&b=2) before you start.

- walk a little every day
- keep **active** between sessions

> Rest for a day or two, then move again.

![A physio at work](https://clinic.example/img/physio.png)

---

1. Warm up
2. Stretch
"""


@pytest.fixture
def settings(tmp_path):
    return test_settings(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_cache():
    render.clear_cache()
    yield
    render.clear_cache()


def extra_for(kind: str) -> dict:
    return {"attended": True} if kind == "webinar_followup" else {}


def compile_kind(settings, kind, **kw):
    kw.setdefault("subject", f"A {kind} email")
    kw.setdefault("preheader", "A short preview line")
    if kind in ("series", "broadcast"):
        kw.setdefault("body_md", ARTICLE)
    kw.setdefault("extra", extra_for(kind))
    return compile_email(settings, kind, **kw)


# ------------------------------------------------------------ every kind
#: Mail to subscribers; the appointment kinds go to an address, not a subscriber
#: (no unsubscribe or view link), see tests/test_appointments.py.
SUBSCRIBER_KINDS = tuple(k for k in EMAIL_KINDS if not k.startswith("appointment_"))


@pytest.mark.parametrize("kind", SUBSCRIBER_KINDS)
def test_every_kind_compiles_strict_and_renders(settings, kind):
    compiled = compile_kind(
        settings, kind, ctas=[{"kind": "appointment", "text": "Book a visit"}], strict=True
    )
    recipient = sample_recipient(settings, kind)
    out = compiled.render(recipient)
    assert compiled.kind == kind
    assert out.subject == f"A {kind} email"
    assert out.preheader == "A short preview line"
    assert '<html lang="en"' in out.html and 'lang="und"' not in out.html
    assert "A short preview line" in out.html  # mj-preview
    assert settings.site_name in out.html and settings.site_name in out.text
    assert settings.postal_address in out.html and settings.postal_address in out.text
    for key in ("unsubscribe_url", "view_url"):
        assert recipient[key] in out.html, key
        assert recipient[key] in out.text, key
    assert recipient["reason"] in out.html and recipient["reason"] in out.text
    assert settings.appointment_url in out.html
    assert f"Book a visit:\n{settings.appointment_url}" in out.text
    assert "Hi Alex," in out.html and "Hi Alex," in out.text
    # no stage-2 Jinja or sentinel leaks into the output
    assert "{{" not in out.html and "{%" not in out.html
    assert not re.search(r"zq[0-9a-f]{10}x\d+qz", out.html + out.text)


@pytest.mark.parametrize("kind", SUBSCRIBER_KINDS)
def test_footer_has_address_and_medical_line_where_required(settings, kind):
    out = compile_kind(settings, kind, strict=True).render(sample_recipient(settings, kind))
    recipient = sample_recipient(settings, kind)
    if kind == "confirm":
        assert "not medical advice" not in out.html
        assert "not medical advice" not in out.text
        # not subscribed yet: no preferences link
        assert recipient["preferences_url"] not in out.html
        assert recipient["preferences_url"] not in out.text
    else:
        assert MEDICAL_NOTE in out.html
        assert MEDICAL_NOTE in " ".join(out.text.split())  # wrapped at 72 columns
        assert recipient["preferences_url"] in out.html
        assert recipient["preferences_url"] in out.text


# ------------------------------------------------------------ known MJML tags
MJML_TAGS = {
    "mjml",
    "mj-head",
    "mj-body",
    "mj-attributes",
    "mj-all",
    "mj-class",
    "mj-breakpoint",
    "mj-font",
    "mj-html-attributes",
    "mj-selector",
    "mj-html-attribute",
    "mj-preview",
    "mj-style",
    "mj-title",
    "mj-accordion",
    "mj-accordion-element",
    "mj-accordion-title",
    "mj-accordion-text",
    "mj-button",
    "mj-carousel",
    "mj-carousel-image",
    "mj-column",
    "mj-divider",
    "mj-group",
    "mj-hero",
    "mj-image",
    "mj-navbar",
    "mj-navbar-link",
    "mj-raw",
    "mj-section",
    "mj-social",
    "mj-social-element",
    "mj-spacer",
    "mj-table",
    "mj-text",
    "mj-wrapper",
    "mj-include",
}
# HTML allowed inside the "ending tags" whose content MJML passes through.
HTML_TAGS = {
    "a",
    "p",
    "br",
    "strong",
    "em",
    "s",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "ul",
    "ol",
    "li",
    "blockquote",
    "img",
    "code",
    "pre",
    "div",
    "span",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}
PASS_THROUGH = {"mj-text", "mj-button", "mj-raw", "mj-table", "mj-navbar-link", "mj-accordion-text"}


class TagChecker(HTMLParser):
    """Collects tags MJML would not know (mjml-python accepts unknown tags silently)."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.bad: list[str] = []

    def _check(self, tag):
        inside_html = any(t in PASS_THROUGH for t in self.stack)
        if tag.startswith("mj"):
            ok = tag in MJML_TAGS and not inside_html
        else:
            ok = inside_html and tag in HTML_TAGS
        if not ok:
            self.bad.append(tag)

    def handle_starttag(self, tag, attrs):
        self._check(tag)
        if tag not in ("br", "img"):
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._check(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack.pop() != tag:
                pass


def unknown_tags(mjml: str) -> list[str]:
    checker = TagChecker()
    checker.feed(mjml)
    checker.close()
    return checker.bad


def test_tag_checker_catches_a_typo():
    assert unknown_tags("<mjml><mj-body><mj-txt>x</mj-txt></mj-body></mjml>") == ["mj-txt"]
    assert unknown_tags("<mjml><mj-body><blink>x</blink></mj-body></mjml>") == ["blink"]


@pytest.mark.parametrize(
    ("kind", "extra"),
    [(k, extra_for(k)) for k in EMAIL_KINDS] + [("webinar_followup", {"attended": False})],
)
def test_templates_use_only_known_mjml_tags(settings, kind, extra):
    compiled = compile_kind(
        settings,
        kind,
        extra=extra,
        ctas=[{"kind": "webinar"}, {"kind": "programme"}],
        body_md=ARTICLE + "\n```\ncode block\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n",
        strict=True,
    )
    assert compiled.mjml.lstrip().startswith('<mjml lang="en">')
    assert unknown_tags(compiled.mjml) == []


# ------------------------------------------------------------ markdown mapping
def test_markdown_maps_to_mjml_components(settings):
    compiled = compile_kind(settings, "series", strict=True)
    mjml = compiled.mjml
    assert '<mj-image src="https://clinic.example/img/physio.png" alt="A physio at work"' in mjml
    assert "<mj-divider" in mjml
    assert "<blockquote style=" in mjml and "<h1 style=" in mjml and "<ul style=" in mjml
    html = compiled.render(sample_recipient(settings)).html
    assert 'href="https://clinic.example/guide?a=1&amp;b=2"' in html
    assert "<em>most</em>" in html and "<strong>active</strong>" in html


def test_plain_text_comes_from_markdown(settings):
    out = compile_kind(settings, "series", ctas=[{"kind": "webinar", "text": "Join us"}]).render(
        sample_recipient(settings)
    )
    text = out.text
    assert "Moving helps your back\n======================" in text
    assert "- walk a little every day\n- keep active between sessions" in text
    assert "our guide (https://clinic.example/guide?a=1&b=2)" in text
    assert "> Rest for a day or two, then move again." in text
    assert "1. Warm up\n2. Stretch" in text
    assert "Join us:\n" + sample_recipient(settings)["webinar_url"] in text
    assert "<p" not in text and "&amp;" not in text
    for key in ("unsubscribe_url", "preferences_url", "view_url"):
        assert sample_recipient(settings)[key] in text


def test_raw_html_in_markdown_is_shown_not_run(settings):
    out = compile_kind(settings, "broadcast", body_md="Hello <script>alert(1)</script>").render(
        sample_recipient(settings)
    )
    assert "<script>" not in out.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in out.html


# ------------------------------------------------------------ personalisation & escaping
@pytest.mark.parametrize(
    "name", ["{{ 7*7 }}", "<script>alert(1)</script>", "{% if 1 %}x{% endif %}", "A \"&' B"]
)
def test_hostile_first_names_are_escaped_not_evaluated(settings, name):
    compiled = compile_kind(
        settings, "series", subject="{{ first_name }}, part 2", body_md="Dear {{ first_name }}."
    )
    out = compiled.render(sample_recipient(settings) | {"first_name": name})
    assert "49" not in out.html and "49" not in out.text and "49" not in out.subject
    assert "<script>" not in out.html
    assert f"Dear {name}." in out.text  # text/plain shows the name as typed
    assert out.subject == f"{name}, part 2"
    escaped = name.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    escaped = escaped.replace('"', "&#34;").replace("'", "&#39;")
    assert f"Dear {escaped}." in out.html
    assert f"Hi {escaped}," in out.html


def test_recipient_values_in_links_are_attribute_escaped(settings):
    out = compile_kind(settings, "series").render(
        sample_recipient(settings) | {"unsubscribe_url": 'https://x.example/u/"><script>'}
    )
    assert 'href="https://x.example/u/&#34;&gt;&lt;script&gt;"' in out.html


def test_newline_in_first_name_does_not_break_the_subject(settings):
    out = compile_kind(settings, "series", subject="Hi {{ first_name }}").render(
        sample_recipient(settings) | {"first_name": "Eve\r\nBcc: x@evil.example"}
    )
    assert out.subject == "Hi Eve Bcc: x@evil.example"


def test_jinja_syntax_in_content_is_literal(settings):
    body = "Use {{ 7*7 }} and {% raw %} and {# note #} and {{{ triple }}}, {{ first_name }}."
    compiled = compile_kind(
        settings,
        "series",
        body_md=body,
        subject="{{ 6*7 }} {% x %} for {{first_name}}",
        preheader="{# p #} {{ first_name }}",
        ctas=[{"kind": "appointment", "text": "{{ 1+1 }}"}],
        extra={"series_title": "{{ 2+2 }}", "part": 2},
    )
    out = compiled.render(sample_recipient(settings))
    literal = "Use {{ 7*7 }} and {% raw %} and {# note #} and {{{ triple }}}, Alex."
    assert literal in " ".join(out.text.split())  # the text part is wrapped
    assert literal in out.html
    assert out.subject == "{{ 6*7 }} {% x %} for Alex"
    assert out.preheader == "{# p #} Alex"
    assert "{{ 1+1 }}" in out.html and "{{ 1+1 }}:" in out.text
    assert "Part 2 of {{ 2+2 }}" in out.html and "Part 2 of {{ 2+2 }}" in out.text


def test_settings_values_are_literal_too(tmp_path):
    s = test_settings(tmp_path, site_name="Spine {{ 7*7 }} & Co", postal_address="{% x %} Road")
    out = compile_kind(s, "broadcast").render(sample_recipient(s))
    assert "Spine {{ 7*7 }} &amp; Co" in out.html and "Spine {{ 7*7 }} & Co" in out.text
    assert "{% x %} Road" in out.html


def test_empty_first_name_gets_a_neutral_greeting(settings):
    out = compile_kind(settings, "series").render(sample_recipient(settings) | {"first_name": ""})
    assert "Hello," in out.html and "Hello," in out.text
    assert "Hi ," not in out.html


def test_greeting_can_be_turned_off(settings):
    out = compile_kind(settings, "series", extra={"greeting": False}).render(
        sample_recipient(settings)
    )
    assert "Hi Alex," not in out.html and "Hi Alex," not in out.text


# ------------------------------------------------------------ CTAs
def test_cta_urls_in_html_and_text(settings):
    ctas = [
        {"kind": "webinar", "text": "Come to the webinar"},
        {"kind": "appointment", "text": ""},
        {"kind": "programme", "text": "Try it"},
        {"kind": "newsletter", "text": "Subscribe"},
    ]
    compiled = compile_kind(settings, "series", ctas=ctas)
    out = compiled.render(sample_recipient(settings))
    for url in (
        sample_recipient(settings)["webinar_url"],
        settings.appointment_url,
        sample_recipient(settings)["programme_url"],  # no programme_url: the reader's start link
        settings.url("/"),
    ):
        assert f'href="{url}"' in out.html
        assert url in out.text
    assert "Book an appointment" in out.html  # default text for an empty one
    personal = compiled.render(
        sample_recipient(settings) | {"webinar_url": "https://w.example/x?a=1&b=2"}
    )
    assert 'href="https://w.example/x?a=1&amp;b=2"' in personal.html
    assert "https://w.example/x?a=1&b=2" in personal.text


def test_webinar_cta_is_left_out_without_an_open_webinar(settings):
    """The webinar is chosen at build time; with none, the block goes and the rest stays."""
    ctas = [{"kind": "webinar", "text": "Reserve my spot"}, {"kind": "appointment", "text": ""}]
    compiled = compile_kind(settings, "series", ctas=ctas)
    with_one = compiled.render(sample_recipient(settings))
    assert re.search(r"Join our next free live webinar, <strong>Spine Health Webinar</strong>, "
                     r"on Tuesday 3 March 2026, 7:00 pm GMT\.", with_one.html)  # fmt: skip
    assert (
        "Join our next free live webinar, Spine Health Webinar, on Tuesday 3 March 2026, "
        "7:00 pm GMT.\n\nReserve my spot:\n" + sample_recipient(settings)["webinar_url"]
    ) in with_one.text
    bare = {
        k: v
        for k, v in sample_recipient(settings).items()
        if k not in ("webinar_url", "webinar_title", "webinar_when")
    }
    without = compiled.render(bare)
    for part in (without.html, without.text):
        assert "webinar" not in part.lower() and "Reserve my spot" not in part
        assert "Book an appointment" in part and settings.appointment_url in part
    # The text still reads as the body, then the remaining CTA: no gap left behind.
    assert "\n\n\n" not in without.text
    assert re.search(r"\n\nBook an appointment:\n", without.text)
    assert without.html.count("<a ") == with_one.html.count("<a ") - 1


def test_every_cta_kind_has_somewhere_to_go_without_a_url_setting(tmp_path):
    """appointment: our own /appointment page; programme: the reader's start link (a
    recipient value); webinar: the next open webinar or nothing; newsletter: signup."""
    s = test_settings(tmp_path, appointment_url="", programme_url="")
    ctas = [{"kind": k, "text": k} for k in ("appointment", "programme", "newsletter")]
    out = compile_kind(s, "series", ctas=ctas).render(sample_recipient(s, "series"))
    assert s.url("/appointment") in out.text and s.url("/") in out.text
    assert "/programme/start/" in out.text  # the sample reader's own start link


def test_unknown_cta_kind_raises(settings):
    with pytest.raises(RenderError, match=r"ctas\[1\]\.kind: unknown CTA kind 'shop'"):
        compile_kind(settings, "series", ctas=[{"kind": "webinar"}, {"kind": "shop"}])


# ------------------------------------------------------------ kinds in detail
def test_confirm_email(settings):
    recipient = sample_recipient(settings, "confirm")
    out = compile_kind(settings, "confirm", strict=True).render(recipient)
    assert "Confirm my subscription" in out.html
    assert f'href="{recipient["confirm_url"]}"' in out.html
    assert f"Confirm my subscription:\n{recipient['confirm_url']}" in out.text
    assert "If this wasn't you" in out.html.replace("&#39;", "'")
    assert "If this wasn't you" in out.text
    assert recipient["reason"] in out.html


def test_webinar_invite_has_personal_reserve_button(settings):
    recipient = sample_recipient(settings, "webinar_invite") | {
        "register_url": "https://news.clinic.example/w/r/PERSONAL"
    }
    out = compile_kind(settings, "webinar_invite", strict=True).render(recipient)
    assert re.search(
        r'href="https://news.clinic.example/w/r/PERSONAL"[^>]*>\s*Reserve my spot', out.html
    )
    assert "Reserve my spot:\nhttps://news.clinic.example/w/r/PERSONAL" in out.text
    assert "Spine Health Webinar" in out.html and recipient["webinar_when"] in out.text


def test_webinar_confirm_has_join_and_calendar_links(settings):
    recipient = sample_recipient(settings, "webinar_confirm")
    out = compile_kind(settings, "webinar_confirm", strict=True).render(recipient)
    assert "Join the webinar" in out.html and recipient["join_url"] in out.text
    assert "Add to Google Calendar" in out.html and "Add to Outlook" in out.html
    assert recipient["google_calendar_url"].replace("&", "&amp;") in out.html
    assert recipient["outlook_url"] in out.text and recipient["google_calendar_url"] in out.text
    assert recipient["webinar_when"] in out.html and recipient["webinar_when"] in out.text


def test_webinar_update_has_join_link_but_no_add_to_calendar_links(settings):
    """Google/Outlook "add" links would create a second event; the attached .ics moves the first."""
    recipient = sample_recipient(settings, "webinar_update")
    out = compile_kind(settings, "webinar_update", strict=True).render(recipient)
    assert "Join the webinar" in out.html and recipient["join_url"] in out.text
    assert recipient["webinar_when"] in out.html and recipient["webinar_when"] in out.text
    for text in (out.html, out.text):
        assert "calendar.google.com" not in text and "outlook.live.com" not in text
        assert "Add to Google Calendar" not in text and "Add to Outlook" not in text
        assert "moves your existing calendar entry" in " ".join(text.split())


def test_webinar_update_says_new_time_and_cancel_has_no_join(settings):
    upd = compile_kind(settings, "webinar_update").render(
        sample_recipient(settings, "webinar_update")
    )
    assert "New time:" in upd.text
    rec = sample_recipient(settings, "webinar_cancel")
    cancel = compile_kind(settings, "webinar_cancel").render(rec)
    assert "cancelled" in cancel.text and rec["join_url"] not in cancel.html


def test_followup_attended_offer(settings):
    compiled = compile_kind(settings, "webinar_followup", extra={"attended": True}, strict=True)
    rec = sample_recipient(settings, "webinar_followup")
    out = compiled.render(rec)
    assert "Thank you for joining" in out.text
    assert f'href="{rec["offer_url"]}"' in out.html and rec["offer_text"] in out.html
    assert f"{rec['offer_text']}:\n{rec['offer_url']}" in out.text
    assert rec["replay_url"] not in out.html


def test_followup_missed_replay_or_next_session(settings):
    compiled = compile_kind(settings, "webinar_followup", extra={"attended": False}, strict=True)
    rec = sample_recipient(settings, "webinar_followup")
    with_replay = compiled.render(rec)
    assert "Watch the replay" in with_replay.html and rec["replay_url"] in with_replay.text
    assert "next session" not in with_replay.html
    no_replay = compiled.render(rec | {"replay_url": ""})
    assert "Watch the replay" not in no_replay.html and "Watch the replay" not in no_replay.text
    assert "next session" in no_replay.html and "next session" in no_replay.text
    assert rec["offer_url"] not in with_replay.html


def test_followup_needs_the_attended_flag(settings):
    with pytest.raises(RenderError, match=r"extra\['attended'\]"):
        compile_email(settings, "webinar_followup", subject="x")


def test_series_needs_a_body_and_kinds_are_checked(settings):
    with pytest.raises(RenderError, match="series email: body_md is empty"):
        compile_email(settings, "series", subject="x")
    with pytest.raises(RenderError, match="unknown email kind 'newsletter'"):
        compile_email(settings, "newsletter", subject="x", body_md="x")


def test_render_error_is_a_funnel_error():
    assert issubclass(RenderError, FunnelError)


# ------------------------------------------------------------ strictness
def test_strict_render_names_the_missing_recipient_value(settings):
    compiled = compile_kind(settings, "confirm", strict=True)
    recipient = sample_recipient(settings, "confirm")
    del recipient["confirm_url"]
    with pytest.raises(RenderError, match="'confirm_url' is missing"):
        compiled.render(recipient)
    lenient = compile_kind(settings, "confirm").render(recipient)
    assert 'href=""' in lenient.html  # production: missing optional values are empty


@pytest.fixture
def template_copy(tmp_path, monkeypatch):
    copy = tmp_path / "email"
    shutil.copytree(render.TEMPLATE_DIR, copy)
    monkeypatch.setattr(render, "TEMPLATE_DIR", copy)
    return copy


def test_strict_compile_names_template_and_unknown_variable(settings, template_copy):
    path = template_copy / "broadcast.mjml.j2"
    path.write_text(
        path.read_text()
        + "{% block before_body %}<mj-text>{{ no_such_thing }}</mj-text>{% endblock %}\n"
    )
    with pytest.raises(RenderError, match=r"broadcast\.mjml\.j2:\d+: 'no_such_thing' is undefined"):
        compile_kind(settings, "broadcast", strict=True)
    # production mode renders the missing optional value as empty
    out = compile_kind(settings, "broadcast").render(sample_recipient(settings))
    assert "no_such_thing" not in out.html and "Moving helps your back" in out.html


def test_unknown_recipient_value_in_a_template_is_an_error(settings, template_copy):
    path = template_copy / "series.txt.j2"
    path.write_text(path.read_text() + "{% block actions %}{{ r.frist_name }}{% endblock %}\n")
    with pytest.raises(RenderError, match=r"series\.txt\.j2:\d+: r\.frist_name is not a recipient"):
        compile_kind(settings, "series")


# ------------------------------------------------------------ size & cache
def test_clip_limit_exceeded_raises_with_kind_and_size(settings):
    huge = "\n\n".join(
        f"Paragraph {i}: " + "a gentle walk helps the back " * 12 for i in range(400)
    )
    with pytest.raises(RenderError, match=r"series email 'Big'.* [\d,]+ bytes.*102,000") as exc:
        compile_email(settings, "series", subject="Big", body_md=huge)
    size = int(re.search(r"is ([\d,]+) bytes", str(exc.value)).group(1).replace(",", ""))
    assert size > 102_000


def test_normal_email_is_well_under_the_clip_limit(settings):
    out = compile_kind(settings, "series").render(sample_recipient(settings))
    assert len(out.html.encode()) < 40_000


def test_compile_is_cached(settings, tmp_path):
    first = compile_kind(settings, "series")
    info = render.cache_info()
    assert (info.misses, info.mjml_compiles) == (1, 1)
    # equal settings values from another object hit the same entry
    again = compile_kind(test_settings(tmp_path / "other"), "series")
    assert again is first
    info = render.cache_info()
    assert (info.hits, info.misses, info.mjml_compiles) == (1, 1, 1)
    # many renders, no recompiles
    for i in range(5):
        first.render(sample_recipient(settings) | {"first_name": f"R{i}"})
    assert render.cache_info().mjml_compiles == 1
    other = compile_kind(settings, "series", body_md=ARTICLE + "\nMore.")
    assert other is not first and render.cache_info().mjml_compiles == 2


def test_different_settings_are_different_entries(tmp_path):
    a = compile_kind(test_settings(tmp_path), "series")
    b = compile_kind(test_settings(tmp_path, postal_address="5 Other Road, Leeds"), "series")
    assert a is not b
    assert "5 Other Road, Leeds" in b.render(sample_recipient(test_settings(tmp_path))).html


def test_site_relative_links_and_images_become_absolute(settings):
    body = "See [the guide](/guide) and [elsewhere](https://other.example/x).\n\n![Spine](/img/s.png)\n"
    compiled = compile_kind(settings, "broadcast", body_md=body)
    out = compiled.render(sample_recipient(settings))
    assert f'href="{settings.url("/guide")}"' in out.html
    assert f'src="{settings.url("/img/s.png")}"' in compiled.mjml
    assert 'href="https://other.example/x"' in out.html
    assert f"the guide ({settings.url('/guide')})" in out.text


def test_table_alignment_keeps_valid_inline_style(settings):
    body = "| Exercise | Reps |\n|:---|---:|\n| Bridge | 10 |\n"
    out = compile_kind(settings, "broadcast", body_md=body).render(sample_recipient(settings))
    assert 'style="text-align:right;border:1px solid' in out.html
    assert "Exercise | Reps\nBridge | 10" in out.text


def test_sentinels_survive_mjml_everywhere_we_put_them():
    """Stage-2 placeholders travel through MJML as sentinels; check MJML keeps them
    verbatim in text, titles, previews and URL attributes (it could URL-escape)."""
    token = render._Stage2("series").first_name
    src = (
        f'<mjml lang="en"><mj-head><mj-title>t{token}</mj-title><mj-preview>p{token}</mj-preview>'
        f'</mj-head><mj-body><mj-section><mj-column><mj-text><a href="https://x/{token}?a">a</a>'
        f'{token}</mj-text><mj-button href="https://x/{token}">b</mj-button>'
        f'<mj-image src="https://x/{token}.png" href="{token}" /></mj-column></mj-section>'
        "</mj-body></mjml>"
    )
    html = render._mjml_to_html.__wrapped__(src)
    assert html.count(str(token)) >= 7
