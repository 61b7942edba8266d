"""Benchmark: hand-assembled MIME (compose) vs EmailMessage + as_bytes (compose_stdlib).

Run from the repository root:  .venv/bin/python bench/mime.py [-n 5000]

Each message is personalised (recipient name, address, unsubscribe token) with
a ~20 KB HTML part and a ~4 KB text part, like a rendered series email.  The
ratio is measured in this one run; DKIM signing is timed separately because it
is optional and dominated by RSA arithmetic.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from campaigns.mime import compose, compose_stdlib, make_message_id  # noqa: E402

PARAGRAPH = (
    "Gentle movement helps a sore back more than rest does: a ten-minute walk, "
    "a few pelvic tilts and a stretch for the hip flexors — repeated daily — "
    "keep the spine's joints nourished and the muscles around them strong. "
)
HTML_ROW = (
    '<tr><td style="padding:0 24px 16px;font-family:Arial,sans-serif;font-size:16px;'
    'line-height:24px;color:#333333;">{p}</td></tr>\n'
)


def build_html() -> str:
    rows = "".join(HTML_ROW.format(p=PARAGRAPH) for _ in range(58))
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>Week 3</title></head>'
        '<body style="margin:0;background:#f4f4f4;"><table role="presentation" width="100%">'
        "<tr><td><h1>Hello {name},</h1></td></tr>\n" + rows + '<tr><td><a href="{unsub}">'
        "Unsubscribe</a> · Back Clinic, 1 Rue Exemple, Genève</td></tr></table></body></html>"
    )


def messages(count: int):
    html = build_html()
    text = "Hello {name},\n\n" + (PARAGRAPH + "\n\n") * 20 + "Unsubscribe: {unsub}\n"
    date = datetime(2024, 5, 6, 7, 30, tzinfo=UTC)
    names = ["Ann Reader", "Zoë Müller", "山田 太郎", "Bob", "Émilie Dupont"]
    for i in range(count):
        name = names[i % len(names)]
        unsub = f"https://news.clinic.example/u/eyJzIjo{i:08d}fQ.ZmFrZS1zaWduYXR1cmU"
        yield dict(
            from_name="Back Clinic",
            from_addr="news@clinic.example",
            to_name=name,
            to_addr=f"reader{i}@example.com",
            subject=f"{name.split()[0]}, week 3: strength without the strain",
            date=date,
            message_id=make_message_id(i, "clinic.example", "bench"),
            text=text.format(name=name, unsub=unsub),
            html=html.format(name=name, unsub=unsub),
            list_id="Importance of exercise <exercise.clinic.example>",
            unsubscribe_url=unsub,
            unsubscribe_mailto=f"unsubscribe+{i}@clinic.example",
        )


def per_message_us(func, inputs) -> tuple[float, int]:
    start = time.perf_counter()
    size = 0
    for kwargs in inputs:
        size += len(func(**kwargs))
    elapsed = time.perf_counter() - start
    return elapsed / len(inputs) * 1e6, size // len(inputs)


def bench_dkim(samples: list[bytes]) -> float | None:
    if shutil.which("openssl") is None:
        return None
    from campaigns.dkim import DkimSigner

    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "k.pem"
        subprocess.run(
            ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
             "-out", str(key)],
            check=True, capture_output=True,
        )  # fmt: skip
        signer = DkimSigner("bench", "clinic.example", key)
        start = time.perf_counter()
        for raw in samples:
            signer.sign(raw)
        return (time.perf_counter() - start) / len(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=5000, help="messages per pipeline")
    args = parser.parse_args()
    inputs = list(messages(args.count))
    per_message_us(compose, inputs[:200])  # warm caches and imports
    per_message_us(compose_stdlib, inputs[:50])

    fast_us, fast_size = per_message_us(compose, inputs)
    slow_us, slow_size = per_message_us(compose_stdlib, inputs)
    html_kb = len(inputs[0]["html"].encode()) / 1024
    print(f"{args.count} messages, HTML {html_kb:.1f} KB, text {len(inputs[0]['text'])} chars")
    print(f"compose (hand-built MIME)        {fast_us:8.1f} us/message  ({fast_size} bytes)")
    print(f"compose_stdlib (EmailMessage)    {slow_us:8.1f} us/message  ({slow_size} bytes)")
    print(f"ratio stdlib / fast              {slow_us / fast_us:8.1f}x")
    sign_us = bench_dkim([compose(**kw) for kw in inputs[:200]])
    if sign_us is None:
        print("DKIM sign: skipped (openssl not found to make a key)")
    else:
        print(f"DKIM sign (OpenSSL, RSA-2048)    {sign_us:8.1f} us/message")


if __name__ == "__main__":
    main()
