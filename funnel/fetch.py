"""The one HTTP GET: feeds and pages from the web come through :func:`get` only.

What it guarantees:

- a timeout on connecting and on every read, and a size cap on the body;
- conditional GET: pass the ETag / Last-Modified from the last answer and a
  ``304 Not Modified`` comes back as ``Response.not_modified``;
- at most ``max_redirects`` redirects, and a redirect back to a URL already
  visited is reported as a loop;
- the host is resolved and *every* address it resolves to is checked: private,
  loopback, link-local, multicast and reserved addresses are refused unless
  ``allow_private`` (so a feed URL cannot be used to probe the clinic's own
  network), and the connection goes to the address that was checked.

Errors are :class:`~funnel.errors.InputError` with one sentence naming the URL.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from email.message import Message
from urllib.parse import urljoin, urlsplit

from .errors import InputError

MAX_BYTES = 10 * 1024 * 1024  # a page or a feed; a WordPress export is read from a file, streamed
TIMEOUT = 10.0
MAX_REDIRECTS = 5
USER_AGENT = "funnel-importer/1.0 (+https://github.com/funnel)"


@dataclass
class Response:
    url: str  # after redirects
    status: int
    body: bytes
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    charset: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.status == 304


def _addresses(host: str, port: int, url: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"{url}: cannot resolve the host {host!r} ({exc})") from exc
    return list(dict.fromkeys(info[4][0] for info in infos))


def _check_public(addresses: list[str], host: str, url: str) -> None:
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise InputError(
                f"{url}: {host} resolves to the private or local address {ip}, which is refused "
                f"so that a URL cannot probe the local network; pass --allow-private to fetch it"
            )


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to an address that was checked, whatever DNS says a moment later."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _once(url: str, headers: dict[str, str], *, allow_private: bool, timeout: float,
          max_bytes: int):
    check_url(url, allow_private=allow_private)
    parts = urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _addresses(host, port, url)
    if not allow_private:
        _check_public(addresses, host, url)
    cls = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = cls(host, port, addresses[0], timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        length = resp.getheader("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise InputError(f"{url}: the answer is {int(length):,} bytes, more than the "
                             f"{max_bytes:,} allowed")
        body = resp.read(max_bytes + 1)
        if len(body) > max_bytes:
            raise InputError(f"{url}: the answer is more than the {max_bytes:,} bytes allowed")
        return resp, body
    except TimeoutError as exc:
        raise InputError(f"{url}: no answer within {timeout:g} s") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise InputError(f"{url}: cannot fetch ({exc})") from exc
    finally:
        conn.close()


def check_url(url: str, *, allow_private: bool = False) -> None:
    """Refuse, without any network use, a URL that can never be fetched: not http(s),
    or a literal private/loopback address or ``localhost`` (unless ``allow_private``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"{url}: only http:// and https:// URLs can be fetched")
    if allow_private:
        return
    host = parts.hostname
    if host == "localhost" or host.endswith(".localhost"):
        _check_public(["127.0.0.1"], host, url)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return
    _check_public([host], host, url)


def get(
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    allow_private: bool = False,
    timeout: float = TIMEOUT,
    max_bytes: int = MAX_BYTES,
    max_redirects: int = MAX_REDIRECTS,
    accept: str = "*/*",
) -> Response:
    """GET ``url``; a 2xx or 304 comes back, anything else is an InputError naming the URL."""
    headers = {"User-Agent": USER_AGENT, "Accept": accept, "Accept-Encoding": "identity"}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    seen = [url]
    current = url
    while True:
        resp, body = _once(current, headers, allow_private=allow_private, timeout=timeout,
                           max_bytes=max_bytes)
        if resp.status in (301, 302, 303, 307, 308):
            target = resp.getheader("Location")
            if not target:
                raise InputError(f"{url}: a redirect ({resp.status}) without a Location")
            target = urljoin(current, target)
            if target in seen:
                raise InputError(f"{url}: the server redirects in a loop ({current} -> {target})")
            if len(seen) > max_redirects:
                raise InputError(f"{url}: more than {max_redirects} redirects")
            seen.append(target)
            current = target
            continue
        if resp.status != 304 and not 200 <= resp.status < 300:
            raise InputError(f"{url}: the server answered {resp.status} {resp.reason}")
        msg = Message()
        msg["Content-Type"] = resp.getheader("Content-Type") or "application/octet-stream"
        return Response(
            url=current,
            status=resp.status,
            body=body,
            etag=resp.getheader("ETag"),
            last_modified=resp.getheader("Last-Modified"),
            content_type=msg.get_content_type(),
            charset=msg.get_param("charset"),
        )
