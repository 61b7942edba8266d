"""DKIM through the whole send path: the bytes the live server received verify with dkimpy."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess

import dkim
import pytest
from click.testing import CliRunner
from conftest import live_processes

import cli
from campaigns import sender


@pytest.fixture(scope="module")
def rsa_key(tmp_path_factory):
    """A fresh 1024-bit key (fast to make; tests only) and its DNS TXT record."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test DKIM key")
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "dkim.pem"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "1024"], check=True, capture_output=True)
    der = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
    return key, record


def test_sent_mail_verifies_and_signs_the_unsubscribe_headers(
    db, settings, clock, smtp_server, mailings, rsa_key
):
    key, record = rsa_key
    signed = settings.replace(
        dkim_selector="s1", dkim_domain="clinic.example", dkim_key_file=str(key)
    )
    mailings.queue(mailings.subscriber("sam@example.com", "Sam Lee"), "sam@example.com")
    assert sender.send_due(db, signed, clock).sent == 1
    (m,) = smtp_server.messages

    lookups = []

    def dns(name, timeout=5):
        lookups.append(name)
        return record if name == b"s1._domainkey.clinic.example." else None

    assert dkim.verify(m.data, dnsfunc=dns)
    assert lookups == [b"s1._domainkey.clinic.example."]
    sig = m.message["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in sig.replace("\r\n", "").split(";") if "=" in t)
    signed_headers = [h.strip().lower() for h in tags["h"].split(":")]
    for name in (
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ):
        assert name in signed_headers
    assert tags["d"] == "clinic.example" and tags["s"] == "s1"

    # A changed unsubscribe header breaks the signature.
    tampered = m.data.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        b"List-Unsubscribe-Post: List-Unsubscribe=Nope",
    )
    assert tampered != m.data and not dkim.verify(tampered, dnsfunc=dns)


def test_unreadable_key_is_one_line_at_startup(cli_env, tmp_path, monkeypatch, smtp_server):
    monkeypatch.setenv("FUNNEL_DKIM_KEY_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("FUNNEL_DKIM_SELECTOR", "s1")
    monkeypatch.setenv("FUNNEL_DKIM_DOMAIN", "clinic.example")
    assert CliRunner().invoke(cli.main, ["subscribers", "add", "a@example.com"]).exit_code == 0
    r = CliRunner().invoke(cli.main, ["send", "-q"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        f"Error: dkim_key_file {tmp_path / 'missing.pem'}: cannot read the DKIM key (No such file or directory)"
    ]
    assert smtp_server.messages == []


def test_every_message_of_a_batch_carries_its_own_signature(db, settings, clock, smtp_server, mailings,
                                                           rsa_key):
    """The signature is taken on the wire thread while the next rows are built:
    each received message verifies on its own bytes (no signature lands on a
    neighbour), and no wire thread outlives the send."""
    import threading

    key, record = rsa_key
    signed = settings.replace(dkim_selector="s1", dkim_domain="clinic.example", dkim_key_file=str(key))
    people = [f"reader{i}@example.com" for i in range(7)]
    for addr in people:
        mailings.queue(mailings.subscriber(addr, addr.split("@")[0].title()), addr)
    assert sender.send_due(db, signed, clock).sent == len(people)
    assert sorted(m.rcpt_tos[0] for m in smtp_server.messages) == sorted(people)
    for m in smtp_server.messages:
        assert m.message["To"].endswith(m.rcpt_tos[0]) or m.rcpt_tos[0] in m.message["To"]
        assert dkim.verify(m.data, dnsfunc=lambda name, timeout=5: record)
    assert not [t for t in threading.enumerate() if t.name.startswith("funnel-wire")]


def _children() -> set[int]:
    """This process's live child processes: the signing child is one."""
    import os

    return live_processes(ppid=os.getpid())


def test_a_batch_is_signed_in_a_child_process_and_every_message_verifies(
    db, settings, clock, smtp_server, mailings, rsa_key, monkeypatch
):
    """From OFFLOAD_AT rows a batch's signatures come from the signing child; they verify
    like the in-process ones, and the child is gone when send_due returns."""
    from campaigns import dkim as ours

    key, record = rsa_key
    signed = settings.replace(
        dkim_selector="s1", dkim_domain="clinic.example", dkim_key_file=str(key)
    )
    made_here = []
    real_make = ours.Signing._make
    monkeypatch.setattr(ours.Signing, "_make", lambda self: made_here.append(1) or real_make(self))
    monkeypatch.setattr(sender, "OFFLOAD_AT", 5)
    mailings.many(12)
    before = _children()
    assert sender.send_due(db, signed, clock).sent == 12

    assert made_here == []  # not one signature made in this process
    dns = lambda name, timeout=5: record  # noqa: E731
    assert len(smtp_server.messages) == 12
    assert all(dkim.verify(m.data, dnsfunc=dns) for m in smtp_server.messages)
    assert _children() - before == set()  # the child was stopped with its signer


def test_a_signing_child_that_dies_leaves_signing_to_the_sender(
    db, settings, clock, smtp_server, mailings, rsa_key
):
    """kill -9 of the signing child mid-run: the messages still go out signed (the
    signatures are made in-process, byte for byte what the child would have made)."""
    import os
    import signal

    from campaigns.dkim import DkimSigner

    key, record = rsa_key
    signer = DkimSigner("s1", "clinic.example", key)
    signer.offload()
    child = signer._helper._proc
    mailings.many(3)
    first = sender.send_due(db, settings, clock, signer=signer)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    mailings.many(3, domain="example.org")
    second = sender.send_due(db, settings, clock, signer=signer)
    assert signer._helper.dead  # found dead, and not restarted for a small batch
    signer.close()

    assert (first.sent, second.sent) == (3, 3)
    dns = lambda name, timeout=5: record  # noqa: E731
    assert all(dkim.verify(m.data, dnsfunc=dns) for m in smtp_server.messages)


def test_the_child_signs_what_this_process_would_sign_and_never_blocks_on_a_full_pipe(
    tmp_path, rsa_key
):
    """Signatures asked for and never taken (messages built, then not sent) fill no pipe:
    the 200th request still gets its answer, identical to the in-process signature."""
    from pathlib import Path

    from campaigns.dkim import DkimSigner

    key, _ = rsa_key
    signer = DkimSigner("s1", "clinic.example", key)
    local = DkimSigner("s1", "clinic.example", key)
    signer.offload()
    body = b"Hello\r\n" * 4000  # a body bigger than a pipe's buffer, sent with each request
    messages = [
        b"From: a@clinic.example\r\nTo: r%d@example.com\r\nSubject: n %d\r\n\r\n" % (i, i) + body
        for i in range(200)
    ]
    signings = [signer.prepare(m) for m in messages]
    assert all(s._ticket is not None for s in signings)
    last = signings[-1].headers()
    assert last == local.sign(messages[-1])[: len(last)]
    assert signings[3].headers() == local.sign(messages[3])[: len(signings[3].headers())]
    proc = signer._helper._proc
    assert proc.poll() is None
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    assert b"PRIVATE" not in cmdline and str(key).encode() not in cmdline  # keys go by pipe
    signer.close()
    assert proc.poll() is not None  # stopped, not left behind


def test_the_child_makes_both_signatures_when_an_ed25519_key_is_set(tmp_path, rsa_key):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from campaigns.dkim import DkimSigner

    key, _ = rsa_key
    ed = tmp_path / "ed.pem"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))  # fmt: skip
    message = b"From: a@clinic.example\r\nTo: r@example.com\r\nSubject: hi\r\n\r\nHello\r\n"
    signer = DkimSigner("s1", "clinic.example", key, ed, "s2")
    signer.offload()
    try:
        signing = signer.prepare(message)
        assert signing._ticket is not None
        made = signing.headers()
    finally:
        signer.close()
    assert made == DkimSigner("s1", "clinic.example", key, ed, "s2").prepare(message).headers()
    assert made.count(b"DKIM-Signature:") == 2 and b"a=ed25519-sha256" in made
    assert b"s=s2;" in made


def test_the_worker_keeps_one_signing_child_and_stops_it_with_itself(
    db, settings, clock, smtp_server, mailings, rsa_key, monkeypatch
):
    """`funnel worker` with a key: one signer (and one child) for the worker's life,
    whose batches all verify; nothing is left running once the worker returns."""
    import threading

    from campaigns import dkim as ours
    from campaigns.worker import run_worker

    key, record = rsa_key
    signed = settings.replace(dkim_selector="s1", dkim_domain="clinic.example",
                              dkim_key_file=str(key), batch_size=10)  # fmt: skip
    monkeypatch.setattr(sender, "OFFLOAD_AT", 5)
    started = []
    real = ours._Helper.__init__
    monkeypatch.setattr(ours._Helper, "__init__",
                        lambda self, signer: started.append(1) or real(self, signer))  # fmt: skip
    mailings.many(35)
    before = _children()
    stop = threading.Event()
    sent = []

    def seen(tick, summary):
        sent.append(summary.sent)
        if len(sent) == 1:
            mailings.many(20, domain="example.org")  # due at the next tick
        if sum(sent) >= 55:
            stop.set()

    run_worker(signed, stop, clock=clock, interval=0.01, on_summary=seen)

    assert sent[0] == 35 and sum(sent) == 55 and len(smtp_server.messages) == 55
    dns = lambda name, timeout=5: record  # noqa: E731
    assert all(dkim.verify(m.data, dnsfunc=dns) for m in smtp_server.messages)
    assert started == [1]  # one child for every batch of every tick
    assert _children() - before == set()


needs_two_cpus = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and at least two CPUs",
)


@needs_two_cpus
def test_a_lone_sender_keeps_its_threads_on_one_cpu_and_the_signing_child_on_the_others(
    db, settings, clock, smtp_server, mailings, rsa_key, monkeypatch
):
    """While a signed batch goes out, the builder and the wire thread (started by the
    first batch, so already running for the next) share one CPU and the signing child
    has the others; after each batch the caller's CPUs are what they were, and every
    message verifies."""
    import threading

    from campaigns.dkim import DkimSigner

    key, record = rsa_key
    signer = DkimSigner("s1", "clinic.example", key)
    monkeypatch.setattr(sender, "OFFLOAD_AT", 5)
    mailings.many(15)
    before = os.sched_getaffinity(0)
    seen = []

    real_batch = sender._send_batch

    def batch(*args):
        stop = real_batch(*args)  # the wire thread has started by now
        wire = next(t for t in threading.enumerate() if t.name.startswith("funnel-wire"))
        seen.append((os.sched_getaffinity(0), os.sched_getaffinity(wire.native_id),
                     os.sched_getaffinity(signer._helper._proc.pid)))  # fmt: skip
        return stop

    monkeypatch.setattr(sender, "_send_batch", batch)
    after = []
    try:
        summary = sender.send_due(db, settings.replace(batch_size=5), clock, signer=signer,
                                  progress=lambda n: after.append(os.sched_getaffinity(0)))
    finally:
        signer.close()

    assert summary.sent == 15 and len(seen) == 3  # three batches of five, the wire thread
    for builder, wire, child in seen:
        assert len(builder) == 1 and wire == builder
        assert child == before - builder and child  # the other CPUs, and only those
    assert after and all(cpus == before for cpus in after)  # given back after each batch
    assert os.sched_getaffinity(0) == before
    dns = lambda name, timeout=5: record  # noqa: E731
    assert all(dkim.verify(m.data, dnsfunc=dns) for m in smtp_server.messages)


@needs_two_cpus
def test_several_senders_or_one_cpu_leave_the_cpus_to_the_scheduler(settings, rsa_key):
    """A worker with several sender processes pins nothing (two senders could land on
    one CPU), and neither does a sender that may use one CPU only."""
    from campaigns import worker

    key, _ = rsa_key
    signed = settings.replace(dkim_selector="s1", dkim_domain="clinic.example",
                              dkim_key_file=str(key))  # fmt: skip
    assert worker._signer(signed, None, 1).apart is True
    several = worker._signer(signed, None, 2)
    assert several.apart is False
    lone = worker._signer(signed, None, 1)
    everything = os.sched_getaffinity(0)
    several.offload()
    lone.offload()
    try:
        several.keep_apart()()
        assert os.sched_getaffinity(0) == everything
        assert os.sched_getaffinity(several._helper._proc.pid) == everything
        one = {min(everything)}
        os.sched_setaffinity(0, one)
        try:
            lone.keep_apart()()
            assert os.sched_getaffinity(lone._helper._proc.pid) == everything
        finally:
            os.sched_setaffinity(0, everything)
    finally:
        several.close()
        lone.close()


@needs_two_cpus
def test_a_thread_that_cannot_be_pinned_leaves_none_pinned(rsa_key, monkeypatch):
    """If pinning fails halfway (a thread gone between two calls), the threads already
    pinned get their CPUs back at once, and nothing is left to undo."""
    from campaigns.dkim import DkimSigner

    key, _ = rsa_key
    signer = DkimSigner("s1", "clinic.example", key)
    signer.offload()
    everything = os.sched_getaffinity(0)
    gone = 2**22 + 17  # a thread id that getaffinity still answers for, setaffinity not
    real_get, real_set = os.sched_getaffinity, os.sched_setaffinity
    monkeypatch.setattr(os, "sched_getaffinity", lambda tid: everything if tid == gone else real_get(tid))

    def set_affinity(tid, cpus):
        if tid == gone:
            raise ProcessLookupError(3, "No such process")
        real_set(tid, cpus)

    monkeypatch.setattr(os, "sched_setaffinity", set_affinity)
    try:
        undo = signer.keep_apart([gone])
        assert real_get(0) == everything  # the caller, pinned first, was given its CPUs back
        undo()
        assert real_get(0) == everything
    finally:
        monkeypatch.undo()
        signer.close()
