"""Benchmark: compile an email once, then personalise it for N recipients.

    .venv/bin/python bench/render.py [--n 10000]

Prints the one-off compile cost (Markdown → MJML → HTML, cold cache) and the
per-recipient cost of ``CompiledEmail.render`` (subject + preheader + HTML +
text), which is what the sender pays per message.  All figures come from one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mjml import mjml2html  # noqa: E402

from campaigns import render  # noqa: E402
from funnel.settings import test_settings  # noqa: E402

FALLBACK_BODY = """## Small steps, every day

Gentle movement is one of the most reliable ways to calm a sore back.
Start with a short walk and build up [at your own pace](https://clinic.example/pace).

- walk for ten minutes
- stand up every half hour
- breathe slowly while you stretch

> Consistency matters more than intensity.
"""


def article_body() -> str:
    """The first bundled series step if present (front matter dropped), else a stand-in."""
    steps = sorted((REPO / "content" / "series" / "importance-of-exercise").glob("*.md"))
    if not steps:
        return FALLBACK_BODY * 4
    text = steps[0].read_text(encoding="utf-8")
    if text.startswith("---"):
        text = text.split("---", 2)[2]
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="personalised emails to render")
    args = parser.parse_args()

    settings = test_settings(tempfile.mkdtemp(prefix="funnel-bench-"))
    body = article_body()
    ctas = [{"kind": "appointment", "text": "Book an assessment"}, {"kind": "webinar"}]

    render.clear_cache()
    t0 = time.perf_counter()
    compiled = render.compile_email(
        settings,
        "series",
        subject="{{ first_name }}, why the order matters",
        preheader="Part 1 of 6",
        body_md=body,
        ctas=ctas,
    )
    compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    render.compile_email(
        settings,
        "series",
        subject="{{ first_name }}, why the order matters",
        preheader="Part 1 of 6",
        body_md=body,
        ctas=ctas,
    )
    cached_s = time.perf_counter() - t0

    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        mjml2html(compiled.mjml, disable_comments=True, fonts={})
    mjml_s = (time.perf_counter() - t0) / reps

    base = render.sample_recipient(settings, "series")
    recipients = [
        {
            **base,
            "first_name": f"Reader{i}",
            "email": f"reader{i}@example.com",
            "unsubscribe_url": settings.url(f"/u/tok{i:08d}"),
            "preferences_url": settings.url(f"/p/tok{i:08d}"),
            "view_url": settings.url(f"/m/tok{i:08d}"),
        }
        for i in range(args.n)
    ]
    compiled.render(recipients[0])  # warm up
    t0 = time.perf_counter()
    total = 0
    for rec in recipients:
        out = compiled.render(rec)
        total += len(out.html) + len(out.text)
    render_s = time.perf_counter() - t0
    assert f"Reader{args.n - 1}" in out.html and "tok" in out.text

    html_bytes = len(out.html.encode("utf-8"))
    print(
        f"body: {len(body):,} chars of Markdown; HTML {html_bytes:,} bytes, text {len(out.text):,}"
    )
    print(f"compile (cold: markdown + jinja + MJML + checks): {compile_s * 1e3:.2f} ms")
    print(f"  of which one mjml2html call:                    {mjml_s * 1e6:.0f} µs")
    print(f"compile (cached):                                 {cached_s * 1e6:.1f} µs")
    print(
        f"render: {args.n:,} personalised emails in {render_s:.3f} s = "
        f"{render_s / args.n * 1e6:.1f} µs per email (subject+preheader+html+text)"
    )
    print(
        f"ratio: one MJML compile costs {mjml_s / (render_s / args.n):.1f}x a personalised render"
    )


if __name__ == "__main__":
    main()
