"""Preview files for series steps and broadcasts: what a reader would get.

Each step is rendered strictly for a sample reader and assembled by the same
path a send takes (:func:`campaigns.messages.assemble`), so the ``.eml`` is
the message the worker would build, List-Unsubscribe and all.
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from . import broadcasts, merge_tags, messages
from .content import list_id
from .mime import make_message_id
from .render import Rendered, compile_email, footer_reason, sample_recipient
from .series import Series, Step, find_series, resolve_step


@dataclass
class PreviewResult:
    series: str
    step: Step
    subject: str
    preheader: str
    html_bytes: int
    words: int
    files: list[Path]

    @property
    def html_kb(self) -> float:
        return self.html_bytes / 1024


def width_preview_page(title: str, html: str) -> str:
    """One page showing the email at phone (375 px) and desktop (800 px) widths."""
    doc = html_lib.escape(html, quote=True)
    safe_title = html_lib.escape(title)
    frames = "\n".join(
        f"<figure><figcaption>{label} · {width}px</figcaption>"
        f'<iframe width="{width}" height="900" srcdoc="{doc}"></iframe></figure>'
        for label, width in (("Mobile", 375), ("Desktop", 800))
    )
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>Preview: {safe_title}</title>"
        "<style>body{font-family:sans-serif;background:#eee;margin:16px}"
        "main{display:flex;gap:24px;align-items:flex-start}"
        "figure{margin:0}iframe{border:1px solid #999;background:#fff}</style>"
        f"</head><body><h1>{safe_title}</h1><main>\n{frames}\n</main></body></html>\n"
    )


def preview_steps(
    settings: Any,
    series: Series,
    steps: Sequence[Step],
    out_dir: Path,
    now: datetime,
) -> list[PreviewResult]:
    """Render ``steps`` for a sample reader and write, per step, into ``out_dir``:

    ``<series>-<key>.html``, ``.txt``, ``.eml`` (a complete message, exactly as
    the worker would build it, with List-Unsubscribe etc.) and ``.preview.html``
    (mobile and desktop widths side by side).  Rendering is strict, so an
    unknown template variable or a CTA without a URL fails here, not in a send.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipient = sample_recipient(settings, "series")
    domain = settings.sender_domain
    results = []
    for step in steps:
        compiled = compile_email(
            settings,
            "series",
            subject=step.subject,
            preheader=step.preheader,
            body_md=step.body_md,
            ctas=step.ctas,
            strict=True,
        )
        rendered = compiled.render(recipient)
        message = messages.assemble(
            settings, rendered,
            to_name=str(recipient.get("first_name") or ""),
            to_addr=str(recipient["email"]),
            date=now,
            message_id=make_message_id(step.part, domain, salt=f"preview:{series.slug}:{step.key}"),
            list_id=list_id(settings, series.stream),
            unsubscribe_url=str(recipient["unsubscribe_url"]),
            unsubscribe_mailto=f"mailto:unsubscribe@{domain}?subject=unsubscribe",
        )
        stem = out_dir / f"{series.slug}-{step.key}"
        paths = [
            stem.with_name(stem.name + ".html"),
            stem.with_name(stem.name + ".txt"),
            stem.with_name(stem.name + ".eml"),
            stem.with_name(stem.name + ".preview.html"),
        ]
        paths[0].write_text(rendered.html, encoding="utf-8")
        paths[1].write_text(rendered.text, encoding="utf-8")
        paths[2].write_bytes(message)
        paths[3].write_text(width_preview_page(rendered.subject, rendered.html), encoding="utf-8")
        results.append(
            PreviewResult(
                series=series.slug,
                step=step,
                subject=rendered.subject,
                preheader=rendered.preheader,
                html_bytes=len(rendered.html.encode("utf-8")),
                words=step.words,
                files=paths,
            )
        )
    return results


# ----------------------------------------------------------------- broadcasts
@dataclass(frozen=True)
class BroadcastPreview:
    rendered: Rendered
    eml: bytes

    @property
    def page(self) -> str:
        """The email at phone and desktop width side by side (one HTML page)."""
        return width_preview_page(self.rendered.subject, self.rendered.html)


def render_broadcast(settings: Any, now: datetime, *, subject: str, preheader: str = "",
                     body_md: str, ctas: Sequence[dict] = (), stream: str = "broadcasts",
                     ref: str = "draft") -> BroadcastPreview:
    """A broadcast (saved or not yet) as a sample reader gets it: rendered parts and the .eml.

    Unknown merge tags fail here with the field named, as they do on create.
    """
    for text, field in ((subject, "Subject"), (preheader, "Preheader"), (body_md, "Message")):
        merge_tags.check(text, field)
    recipient = sample_recipient(settings, "broadcast")
    recipient["reason"] = footer_reason("newsletter", settings.site_name)
    compiled = compile_email(settings, "broadcast", subject=subject, preheader=preheader,
                             body_md=body_md, ctas=list(ctas), extra={"reason": recipient["reason"]})
    rendered = compiled.render(recipient)
    eml = messages.assemble(
        settings, rendered, to_name=str(recipient["first_name"]), to_addr=str(recipient["email"]),
        date=now, message_id=make_message_id(0, settings.sender_domain, salt=f"preview:{ref}"),
        list_id=list_id(settings, stream), unsubscribe_url=str(recipient["unsubscribe_url"]),
        unsubscribe_mailto=f"mailto:unsubscribe@{settings.sender_domain}?subject=unsubscribe",
    )  # fmt: skip
    return BroadcastPreview(rendered, eml)


def problem_page(message: str) -> str:
    """What the preview frame shows instead of an email that can't be built."""
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>Preview</title>'
        "<style>body{font-family:sans-serif;margin:16px;color:#a3261b}</style></head>"
        f"<body><p role=\"alert\">{html_lib.escape(message)}</p></body></html>\n"
    )


def render_campaign(db, settings: Any, campaign_id: int, now: datetime) -> BroadcastPreview:
    """A saved broadcast as a sample reader gets it."""
    c = broadcasts.get(db, campaign_id)
    return render_broadcast(settings, now, subject=c.subject, preheader=c.preheader,
                            body_md=c.body_md, ctas=c.ctas, stream=c.stream, ref=f"campaign:{c.id}")


def preview_campaign(db, settings: Any, campaign_id: int, out_dir: Path,
                     now: datetime) -> list[Path]:
    """Write campaign-ID.html, .txt, .eml and .preview.html (phone and desktop) into ``out_dir``."""
    p = render_campaign(db, settings, campaign_id, now)
    c = broadcasts.get(db, campaign_id)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"campaign-{c.id}"
    files = {
        ".html": p.rendered.html,
        ".txt": p.rendered.text,
        ".preview.html": p.page,
    }
    paths = []
    for suffix, text in files.items():
        paths.append(out_dir / (stem + suffix))
        paths[-1].write_text(text, encoding="utf-8")
    paths.append(out_dir / (stem + ".eml"))
    paths[-1].write_bytes(p.eml)
    return paths


def render_step(settings: Any, slug: str, step_ref: str, now: datetime) -> BroadcastPreview:
    """One series step as a sample reader gets it (strict, like ``funnel preview``)."""
    series = find_series(settings.content_paths, slug)
    step = resolve_step(series, step_ref)
    recipient = sample_recipient(settings, "series")
    compiled = compile_email(settings, "series", subject=step.subject, preheader=step.preheader,
                             body_md=step.body_md, ctas=step.ctas, strict=True)
    rendered = compiled.render(recipient)
    eml = messages.assemble(
        settings, rendered, to_name=str(recipient["first_name"]), to_addr=str(recipient["email"]),
        date=now, message_id=make_message_id(step.part, settings.sender_domain,
                                             salt=f"preview:{series.slug}:{step.key}"),
        list_id=list_id(settings, series.stream), unsubscribe_url=str(recipient["unsubscribe_url"]),
        unsubscribe_mailto=f"mailto:unsubscribe@{settings.sender_domain}?subject=unsubscribe",
    )  # fmt: skip
    return BroadcastPreview(rendered, eml)
