"""Outbound HTTP to URLs that users supply (webhooks, input images): only to the public internet.

Two steps, used together:

- :func:`check_public_url` parses the URL, resolves its host once and refuses it unless every
  address is globally routable (:func:`is_public_address`). It returns a :class:`CheckedUrl`:
  the URL plus the addresses that were checked.
- :func:`post` and :func:`open_get` connect to one of those checked addresses — never to a second
  DNS answer (DNS rebinding) — while TLS SNI, certificate verification and ``Host`` still use the
  host name. Redirects are not followed, proxies from the environment are not used, and a total
  time cap (plus a byte cap for GET) bounds what a slow or huge answer can cost.

Refusals raise :class:`UrlRefused` (a ``ValueError`` with a message fit for the user); transport
problems raise :class:`FetchFailed` and its subclasses.
"""

import ipaddress
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.client import HTTPException
from urllib.parse import urlsplit

from requests.certs import where as ca_bundle
from requests.utils import requote_uri
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError

MAX_URL_LENGTH = 2000
CHUNK = 64 * 1024
# what connecting, TLS (a name mismatch is a ValueError in urllib3) and HTTP parsing can raise
TRANSPORT_ERRORS = (OSError, ValueError, HTTPError, HTTPException)

# IPv6 forms that carry an IPv4 address; the IPv4 address inside is what must be public.
NAT64 = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: local use only
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (also :: and ::1)
GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
# Not globally routable, but "global" for some Python versions' ipaddress: refused explicitly.
NEVER = [ipaddress.ip_network(net) for net in ("192.0.0.0/24", "192.88.99.0/24", "3fff::/20")]
# the last label of a host that a URL parser (WHATWG, some resolvers) reads as an IPv4 number
NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)


class UrlRefused(ValueError):
    """The URL may not be fetched (scheme, form, host or address not allowed); says why."""


class FetchFailed(Exception):
    """Connecting, sending or reading failed."""


class FetchTimedOut(FetchFailed):
    """The total time cap passed."""


class ResponseTooLarge(FetchFailed):
    """The answer is longer than the byte cap."""


@dataclass(frozen=True)
class CheckedUrl:
    """A URL that passed :func:`check_public_url`, with the addresses its host resolved to then."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA) host name or IP literal, without brackets
    port: int
    target: str  # path and query, percent-encoded
    addresses: tuple

    @property
    def host_header(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def is_public_address(address):
    """True when ``address`` is globally routable: never loopback, private, link-local, CGNAT,
    multicast, reserved or documentation space, also not when wrapped in IPv6 (IPv4-mapped,
    IPv4-compatible, 6to4, NAT64; Teredo is never allowed)."""
    ip = ipaddress.ip_address(address)
    if any(ip in net for net in NEVER if net.version == ip.version):
        return False
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip in IPV4_COMPATIBLE:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in NAT64:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip in NAT64_LOCAL or ip.teredo is not None:
            return False
        if ip.sixtofour is not None and not is_public_address(ip.sixtofour):
            return False
        return ip in GLOBAL_UNICAST and ip.is_global and not ip.is_multicast
    return ip.is_global and not ip.is_multicast and not ip.is_reserved


def _parse(url):
    if not isinstance(url, str) or not url:
        raise UrlRefused("Enter a URL.")
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"The URL is longer than {MAX_URL_LENGTH} characters.")
    if any(char <= " " or char == "\x7f" for char in url):
        raise UrlRefused("The URL may not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:  # "http://[::1/", "http://[127.0.0.1]/", a port that is not a number
        raise UrlRefused("The URL is not valid.") from exc
    if parts.scheme not in {"http", "https"}:
        raise UrlRefused("Only http and https URLs are allowed.")
    if not hostname:
        raise UrlRefused("The URL has no host.")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("Credentials in the URL are not allowed.")
    if port == 0:
        raise UrlRefused("The URL has an invalid port.")
    return parts, hostname, port or (443 if parts.scheme == "https" else 80)


def _host(hostname):
    """The host as an IP address (no DNS) or an ASCII name; refuses what parsers read differently."""
    if "%" in hostname:
        raise UrlRefused("Addresses with a zone (%) are not allowed.")
    try:
        return str(ipaddress.ip_address(hostname)), True
    except ValueError:
        pass
    name = hostname.rstrip(".")
    if name and NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        # 2130706433, 0x7f.1, 0177.0.0.1, 127.1: IPv4 in a spelling each parser reads its own way
        raise UrlRefused("Write an IPv4 address as four decimal numbers (e.g. 192.0.2.10).")
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UrlRefused("The host name is not valid.") from exc
    if not ascii_name or len(ascii_name) > 253:
        raise UrlRefused("The host name is not valid.")
    return ascii_name, False


def check_public_url(url, *, allow_private=False, resolver=None):
    """Check ``url`` and resolve its host once; return a :class:`CheckedUrl` or raise :class:`UrlRefused`.

    Every address the host resolves to must be public (:func:`is_public_address`) unless
    ``allow_private`` (tests, trusted networks). ``resolver`` defaults to ``socket.getaddrinfo``.
    """
    parts, hostname, port = _parse(url)
    host, literal = _host(hostname)
    if literal:
        addresses = [host]
    else:
        resolve = resolver or socket.getaddrinfo
        try:
            infos = resolve(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as exc:
            raise UrlRefused(f"The host {host} does not resolve.") from exc
        addresses = list(dict.fromkeys(info[4][0].split("%", 1)[0] for info in infos))
        if not addresses:
            raise UrlRefused(f"The host {host} does not resolve.")
    if not allow_private and not all(is_public_address(address) for address in addresses):
        raise UrlRefused("Only public internet addresses are allowed (not loopback, private, link-local, "
                         "shared or reserved ones).")
    target = requote_uri((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    return CheckedUrl(url=url, scheme=parts.scheme, host=host, port=port, target=target, addresses=tuple(addresses))


@dataclass
class PinnedResponse:
    """An answer read from a pinned connection: status, headers, and (GET) the body as it streams."""

    status: int
    headers: dict
    _response: object
    _deadline: "_Deadline"
    _max_bytes: int | None = None

    def iter_bytes(self, chunk_size=CHUNK):
        """The body, raw (no decompression); raises ``ResponseTooLarge`` past the byte cap and
        ``FetchTimedOut`` past the time cap."""
        length = self.headers.get("content-length", "")
        if self._max_bytes is not None and length.isdigit() and int(length) > self._max_bytes:
            raise ResponseTooLarge(f"The answer is {length} bytes; at most {self._max_bytes} are read.")
        received = 0
        while True:
            try:
                chunk = self._response.read(chunk_size, decode_content=False)
            except TRANSPORT_ERRORS as exc:
                raise self._deadline.error(exc) from exc
            if not chunk:
                self._deadline.check()  # the cap cut the body short: that is no end
                return
            received += len(chunk)
            if self._max_bytes is not None and received > self._max_bytes:
                raise ResponseTooLarge(f"The answer is longer than {self._max_bytes} bytes.")
            yield chunk

    def read(self):
        return b"".join(self.iter_bytes())


class _Deadline:
    """Shuts the socket when the total time cap passes, whatever phase is blocked on it (a server
    dripping one byte at a time never trips a per-read timeout)."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.expired = False
        self._timer = None

    def arm(self, sock, started):
        remaining = self.seconds - (time.monotonic() - started)
        if remaining <= 0:
            raise FetchTimedOut(f"No complete answer within {self.seconds:g} s.")
        # the socket itself, not connection.sock: http.client drops that once a response owns the socket
        self._timer = threading.Timer(remaining, self._expire, args=(sock,))
        self._timer.daemon = True
        self._timer.start()

    def _expire(self, sock):
        self.expired = True
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def cancel(self):
        if self._timer is not None:
            self._timer.cancel()

    def check(self):
        """Raise if the cap passed: reads that ended because the socket was shut look like an end."""
        if self.expired:
            raise FetchTimedOut(f"No complete answer within {self.seconds:g} s.")

    def error(self, exc):
        if self.expired:
            return FetchTimedOut(f"No complete answer within {self.seconds:g} s.")
        return FetchFailed(f"{type(exc).__name__}: {exc}")


def _connect(checked, *, timeout, ca_certs):
    """A connection to the first checked address that answers (TLS verified against the host name)."""
    problems = []
    for address in checked.addresses:
        if checked.scheme == "https":
            connection = HTTPSConnection(address, checked.port, timeout=timeout, server_hostname=checked.host,
                                         assert_hostname=checked.host, cert_reqs="CERT_REQUIRED",
                                         ca_certs=ca_certs or ca_bundle())  # the CAs requests trusts
        else:
            connection = HTTPConnection(address, checked.port, timeout=timeout)
        try:
            connection.connect()
            return connection
        except TRANSPORT_ERRORS as exc:
            connection.close()
            problems.append(f"{address}: {type(exc).__name__}: {exc}")
    raise FetchFailed("Could not connect: " + "; ".join(problems))


@contextmanager
def _exchange(checked, method, *, body, headers, timeout, total_seconds, max_bytes, ca_certs):
    started = time.monotonic()
    deadline = _Deadline(total_seconds)
    connection = _connect(checked, timeout=timeout, ca_certs=ca_certs)
    try:
        deadline.arm(connection.sock, started)
        try:
            connection.request(method, checked.target, body=body,
                               headers={"Host": checked.host_header, "Accept-Encoding": "identity",
                                        **(headers or {})},
                               preload_content=False, decode_content=False)
            response = connection.getresponse()
        except TRANSPORT_ERRORS as exc:
            raise deadline.error(exc) from exc
        deadline.check()
        yield PinnedResponse(status=response.status, headers={k.lower(): v for k, v in response.headers.items()},
                             _response=response, _deadline=deadline, _max_bytes=max_bytes)
    finally:
        deadline.cancel()
        connection.close()


def post(checked, *, body, headers=None, timeout=5.0, total_seconds=10.0, ca_certs=None):
    """POST ``body`` (bytes) to a checked URL; return the status code (the answer's body is not read)."""
    with _exchange(checked, "POST", body=body, headers=headers, timeout=timeout, total_seconds=total_seconds,
                   max_bytes=None, ca_certs=ca_certs) as response:
        return response.status


@contextmanager
def open_get(checked, *, headers=None, timeout=5.0, total_seconds=30.0, max_bytes, ca_certs=None):
    """GET a checked URL: ``with open_get(...) as response: for chunk in response.iter_bytes(): …``."""
    with _exchange(checked, "GET", body=None, headers=headers, timeout=timeout, total_seconds=total_seconds,
                   max_bytes=max_bytes, ca_certs=ca_certs) as response:
        yield response
