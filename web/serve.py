"""Serving the public door: the waitress server, ``funnel serve``, ``funnel up`` and the worker.

* :class:`WebServer`: waitress on host:port in a thread, with the connection
  limits, timeouts and trusted-proxy settings from funnel.toml.
* :func:`serve`: the site alone, until SIGINT/SIGTERM (``funnel serve``).
* :func:`prepare_up`, :func:`dev_smtp_port` and :func:`start_stack`: the dev
  stack of ``funnel up`` (site, worker, embedded SMTP server).
* :func:`run_worker_until_signal`: ``funnel worker``'s loop.
"""

from __future__ import annotations

import ipaddress
import logging
import resource
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import waitress
from flask import Flask
from waitress import wasyncore

from campaigns.webinars import Webinar, ensure_demo_webinar, load_files, webinar_files
from campaigns.worker import run_worker
from funnel import clock as clocks
from funnel import devmail
from funnel.db import connect, init_db
from funnel.errors import FunnelError
from funnel.settings import Settings

from . import create_app

log = logging.getLogger("funnel.web")

#: The GIL switch interval the web server sets (see WebServer.start).
SWITCH_INTERVAL = 0.001
#: How long waitress's I/O loop waits in poll() when nothing happens (an int:
#: waitress truncates it).  Only stop() waits on it, and stop() closes the sockets.
LOOP_TIMEOUT_SECONDS = 1


class WebServer:
    """waitress on host:port in a thread; ``stop()`` closes it and joins the thread.

    If the server loop ever dies (it should not; select() used to, above fd
    1024), :attr:`failure` says why and :func:`wait_for_signal` ends the
    process with it, so systemd restarts the site instead of leaving a process
    that accepts connections nobody answers.
    """

    def __init__(
        self, app: Flask, host: str = "127.0.0.1", port: int = 8000, threads: int | None = None
    ):
        self.app = app
        self.failure: str | None = None
        self._stopping = False
        s = app.extensions["funnel"].settings
        try:
            self.server = self._create(waitress, app, s, host, port, threads or s.server_threads)
        except OSError as exc:
            raise FunnelError(
                f"web server: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                "is another funnel running there? Pick another port with --port"
            ) from exc
        self.host = host
        self.port = int(self.server.effective_port)
        self._thread = threading.Thread(target=self._run, name="funnel-web", daemon=True)

    @staticmethod
    def _create(waitress, app: Flask, s: Settings, host: str, port: int, threads: int):
        proxy: dict = {"clear_untrusted_proxy_headers": True}  # without a trusted proxy: drop them
        if s.trusted_proxies:
            proxy.update(
                trusted_proxy=s.trusted_proxy_address,
                trusted_proxy_count=s.trusted_proxies,
                trusted_proxy_headers={"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"},
            )
        return waitress.create_server(
            app,
            host=host,
            port=port,
            threads=threads,
            ident="funnel",
            # Bodies up to this size reach Flask, which answers 413 with a friendly
            # page above max_request_bytes; beyond it waitress answers on its own.
            max_request_body_size=max(1 << 20, 4 * app.config["MAX_CONTENT_LENGTH"]),
            # poll() has no FD_SETSIZE (1024) limit; select() died above it.
            asyncore_use_poll=True,
            connection_limit=s.server_connection_limit,
            channel_timeout=s.server_channel_timeout,
            cleanup_interval=s.server_cleanup_interval,
            backlog=s.server_backlog,
            # Whole seconds: waitress casts this to int, and 0 (what 0.2 became)
            # made its I/O loop poll() without waiting, spinning a core even idle.
            asyncore_loop_timeout=LOOP_TIMEOUT_SECONDS,
            **proxy,
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # noqa: BLE001 - reported, then the process exits
            if self._stopping:
                return  # the socket was closed under the loop by stop()
            self.failure = f"{type(exc).__name__}: {exc}"
        else:
            if self._stopping:
                return
            self.failure = "the server loop returned"
        log.error("web server thread stopped: %s", self.failure)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> WebServer:
        # Each SQLite call and socket operation releases the GIL; getting it
        # back waits for the switch interval (5 ms by default) while request
        # threads run Python, which stalls waitress's I/O thread and the
        # thread holding the write lock.  1 ms cut the signup p99 under load
        # by a fifth (bench/signup.py); it is process-wide, hence set here,
        # where the process becomes a server.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self.server.task_dispatcher.shutdown(timeout=5)
        wasyncore.close_all(self.server._map)
        self._thread.join(timeout=5)
        state = self.app.extensions.get("funnel")
        if state is not None:
            state.close()


def raise_open_files_limit(wanted: int) -> int:
    """Lift this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit).

    Each open connection is a file descriptor; a soft limit of 1024 (a common
    default) would make accept() fail long before ``server_connection_limit``.
    Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open-files limit is %d, below server_connection_limit + 100 = %d; "
            "raise LimitNOFILE in the systemd unit",
            soft,
            wanted,
        )
    return soft


def configure_logging() -> None:
    """Errors to stderr (systemd's journal); waitress's queue-depth notes only when dire."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # "Task queue depth is N" is logged for every request that waits for a
    # thread: under a burst that is thousands of lines saying "busy".
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    # aiosmtpd (the dev SMTP server) logs every connection at INFO.
    logging.getLogger("mail.log").setLevel(logging.WARNING)


def wait_for_signal(stop: threading.Event, watch: Callable[[], str | None] | None = None) -> None:
    """Block until Ctrl-C / SIGTERM (or ``stop`` is set by someone else).

    ``watch`` is polled twice a second; when it returns a reason (a server or
    worker thread died), this raises FunnelError with it, so the command exits
    non-zero and systemd restarts the service.
    """

    def handler(signum, frame):
        stop.set()

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            reason = watch() if watch else None
            if reason:
                stop.set()
                raise FunnelError(f"{reason}; exiting so the service manager restarts funnel")
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def server_watch(web: WebServer) -> Callable[[], str | None]:
    """A ``watch`` for :func:`wait_for_signal`: why the web server thread died, if it did."""

    def watch() -> str | None:
        if web.alive():
            return None
        return f"web server thread stopped ({web.failure or 'no reason given'})"

    return watch


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    threads: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """``funnel serve``: the site alone (production runs ``funnel worker`` beside it).

    Returns on SIGINT/SIGTERM; raises FunnelError if the server thread dies.
    """
    configure_logging()
    raise_open_files_limit(settings.server_connection_limit + 100)
    web = WebServer(create_app(settings), host, port, threads).start()
    if on_ready:
        on_ready(web.url)
    try:
        wait_for_signal(threading.Event(), server_watch(web))
    finally:
        web.stop()


# ----------------------------------------------------------------- funnel up
def _worker_loop(
    settings: Settings,
    stop: threading.Event,
    clock: Callable[[], datetime],
    interval: float,
    on_summary: Callable | None,
) -> None:
    """The delivery worker inside ``funnel up``: errors are logged, the loop goes on."""
    run_worker(
        settings,
        stop,
        clock=clock,
        interval=interval,
        on_summary=on_summary,
        on_error=lambda exc: log.warning("worker: %s", exc),
    )


@dataclass
class Stack:
    """Everything ``funnel up`` runs: site, worker, dev SMTP server."""

    settings: Settings
    web: WebServer
    devmail: devmail.DevMailServer | None
    worker: threading.Thread | None
    stop_event: threading.Event

    @property
    def url(self) -> str:
        return self.web.url

    def problem(self) -> str | None:
        """Why the stack can't go on (a thread died), for :func:`wait_for_signal`."""
        if self.worker is not None and not self.worker.is_alive() and not self.stop_event.is_set():
            return "worker thread stopped (see the error above)"
        return server_watch(self.web)()

    def stop(self) -> None:
        self.stop_event.set()
        self.web.stop()
        if self.worker is not None:
            self.worker.join(timeout=30)
        if self.devmail is not None:
            self.devmail.stop()


def start_stack(
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    smtp_port: int | None = None,
    worker: bool = True,
    worker_interval: float = 1.0,
    threads: int = 8,
    clock: Callable[[], datetime] = clocks.now,
    on_summary: Callable | None = None,
) -> Stack:
    """Start the dev stack: dev SMTP on ``smtp_port`` (None = no dev SMTP), worker, site.

    With a dev SMTP server the settings' relay is pointed at it, so every
    message lands in the dev inbox.  The caller stops it with ``Stack.stop()``.
    """
    connect(settings.db, migrate=True).close()
    mail = None
    thread = None
    stop_event = threading.Event()
    try:
        if smtp_port is not None:
            mail = devmail.DevMailServer(settings.db, "127.0.0.1", smtp_port, clock).start()
            settings = settings.replace(smtp_urls=(mail.url,))
        app = create_app(settings, clock=clock)
        web = WebServer(app, host, port, threads)  # binds now: a busy port fails here
        if worker:
            thread = threading.Thread(
                target=_worker_loop,
                args=(settings, stop_event, clock, worker_interval, on_summary),
                name="funnel-worker",
                daemon=True,
            )
            thread.start()
        web.start()
    except BaseException:
        stop_event.set()
        if thread is not None:
            thread.join(timeout=30)
        if mail is not None:
            mail.stop()
        raise
    return Stack(settings, web, mail, thread, stop_event)


def run_worker_until_signal(
    settings: Settings,
    *,
    clock: Callable[[], datetime],
    interval: float,
    on_summary: Callable,
    on_error: Callable[[Exception], None],
    connections: int = 1,
) -> int:
    """``funnel worker``: run the worker until SIGINT/SIGTERM; returns the passes made."""
    stop = threading.Event()

    def handle(signum, frame):  # noqa: ARG001
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return run_worker(
            settings, stop, clock=clock, interval=interval, on_summary=on_summary,
            on_error=on_error, connections=connections,
        )  # fmt: skip
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@dataclass
class UpReady:
    """What ``funnel up`` found before starting: settings to run with, migrations, demo."""

    settings: Settings
    applied: list[str]
    demo: Webinar | None


def prepare_up(
    settings: Settings, port: int, now: datetime, on_migrated: Callable[[list[str]], None]
) -> UpReady:
    """Migrate the database, follow --port for the default base URL, load the webinars.

    ``on_migrated`` hears the migrations just applied before the webinars load.
    In dev mode the demo webinar is made (or moved on); otherwise webinars on
    a standing slot move on and nothing is created.
    """
    db = connect(settings.db)
    try:
        applied = init_db(db)
        on_migrated(applied)
        if settings.base_url == Settings().base_url:  # the default: follow --port
            settings = settings.replace(base_url=f"http://127.0.0.1:{port}")
        demo = None
        if settings.dev:
            demo = ensure_demo_webinar(db, settings, now)
        else:
            load_files(db, settings, webinar_files(settings), now, create=False)
    finally:
        db.close()
    return UpReady(settings, applied, demo)


def dev_smtp_port(settings: Settings, smtp_port: int | None, no_devmail: bool) -> int | None:
    """The port for ``funnel up``'s embedded SMTP server, or None to send to the relay.

    The dev inbox catches mail only when the first relay is on this machine
    (a loopback address or ``localhost``) and --no-devmail was not given;
    without --smtp-port it takes the relay's port.
    """
    relay = settings.relays[0]
    try:
        relay_is_local = ipaddress.ip_address(relay.host).is_loopback
    except ValueError:
        relay_is_local = relay.host == "localhost"
    if no_devmail or not relay_is_local:
        return None
    return smtp_port or relay.port
