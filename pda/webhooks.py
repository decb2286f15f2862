"""Signed callbacks on the wire: Standard Webhooks signatures, where a callback may go,
and one delivery attempt.

- :func:`sign` is the ``webhook-signature`` of one attempt: ``v1,`` + base64 of
  HMAC-SHA256(secret, ``{webhook-id}.{webhook-timestamp}.{body}``), the secret being
  ``PDA_WEBHOOK_SECRET`` in the specification's ``whsec_<base64>`` form
  (https://www.standardwebhooks.com), so any Standard Webhooks library verifies it.
- :class:`Allowlist` is ``PDA_CALLBACK_ALLOWED_HOSTS``: host names (exact, or
  ``*.example.com`` for its subdomains) and CIDR ranges (``10.1.0.0/16``, ``127.0.0.1``).
  At submit (:meth:`Allowlist.check_url`) a URL's host must be a listed name, or an
  address inside a listed range; nothing is resolved then. At delivery
  (:func:`post`) the host is resolved once and every address connected to is checked
  again (:meth:`Allowlist.address_allowed`): a listed *name* may resolve only to public
  addresses, or to ones inside a listed range, so a name that is made to resolve to
  127.0.0.1 or 169.254.169.254 later (DNS rebinding) is refused. The connection goes to
  the checked address itself (TLS still verified against the host name).
- :func:`post` follows no redirect (a 3xx is an answer like any other non-2xx), times out
  the connect and each read, and reads at most :data:`RESPONSE_CAP` bytes of the answer.

Standard library only: the API and the workers both import this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import CallbackNotAllowedError
from .version import __version__

SECRET_PREFIX = "whsec_"
#: bytes of a receiver's answer read at most (the rest is never read)
RESPONSE_CAP = 4096
#: longest callback URL accepted
MAX_URL_LENGTH = 2000
USER_AGENT = f"pda-webhooks/{__version__}"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def secret_bytes(secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret; ValueError saying what is wrong otherwise."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret has the form whsec_<base64 of 32 random bytes>; "
                         "make one with: python3 -c 'import base64, os; "
                         "print(\"whsec_\" + base64.b64encode(os.urandom(32)).decode())'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the part after whsec_ is not base64: {exc}") from exc
    if len(key) < 16:
        raise ValueError("a webhook secret needs at least 16 bytes (24 base64 characters)")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``webhook-signature``: ``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body``."""
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def headers(key: bytes, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt. The id is the event's (the same
    on every retry); the timestamp is the attempt's, so a receiver's replay window (five
    minutes in the reference libraries) accepts a retry made hours later."""
    ts = int(time.time() if now is None else now)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts),
            "webhook-signature": sign(key, msg_id, ts, body)}


@dataclass(frozen=True)
class Allowlist:
    """PDA_CALLBACK_ALLOWED_HOSTS: names (``*.`` prefix for subdomains) and CIDR ranges."""

    names: tuple[str, ...] = ()
    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """From the comma-separated setting; ValueError names an entry that is neither."""
        names: list[str] = []
        networks: list[Network] = []
        for entry in (e.strip() for e in text.split(",")):
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host = entry.lower().rstrip(".")
            bare = host[2:] if host.startswith("*.") else host
            if not bare or any(not _label_ok(label) for label in bare.split(".")):
                raise ValueError(f"{entry!r} is neither a host name nor a CIDR range")
            names.append(host)
        return cls(tuple(names), tuple(networks))

    @property
    def empty(self) -> bool:
        return not self.names and not self.networks

    def name_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == n or (n.startswith("*.") and host.endswith(n[1:]))
                   for n in self.names)

    def in_ranges(self, address: Address) -> bool:
        return any(address in net for net in self.networks)

    def address_allowed(self, address: Address, *, by_name: bool) -> bool:
        """May a connection go to ``address``? Inside a listed range always; outside, only a
        public address reached through a listed name (``by_name``)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        return self.in_ranges(address) or (by_name and address.is_global)

    def check_url(self, url: str) -> str:
        """``url`` if a callback may be sent there (checked at submit, without resolving);
        :class:`CallbackNotAllowedError` saying why not."""
        target = Target.of(url)
        literal = _literal(target.host)
        if literal is not None:
            if not self.address_allowed(literal, by_name=False):
                raise CallbackNotAllowedError(
                    f"callbacks may not go to {literal}: it is not in "
                    "PDA_CALLBACK_ALLOWED_HOSTS")
        elif not self.name_allowed(target.host):
            raise CallbackNotAllowedError(
                f"callbacks may not go to {target.host!r}: it is not in "
                "PDA_CALLBACK_ALLOWED_HOSTS")
        return url


def _label_ok(label: str) -> bool:
    return 0 < len(label) <= 63 and all(c.isalnum() or c == "-" for c in label)


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class Target:
    """Where a callback URL points: scheme, host, port and the path with its query."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def of(cls, url: str) -> Target:
        if len(url) > MAX_URL_LENGTH:
            raise CallbackNotAllowedError(f"a callback URL has at most {MAX_URL_LENGTH} "
                                          "characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise CallbackNotAllowedError(f"not a valid URL: {exc}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CallbackNotAllowedError("a callback URL is http:// or https:// with a host")
        if parts.username is not None or parts.password is not None:
            raise CallbackNotAllowedError("a callback URL may not carry credentials "
                                          "(user:password@); verify the signature instead")
        if any(ord(c) < 33 or ord(c) == 127 for c in url):
            raise CallbackNotAllowedError("a callback URL may not contain spaces or "
                                          "control characters")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        default = 443 if parts.scheme == "https" else 80
        return cls(parts.scheme, parts.hostname, port or default, path)

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class Refused(Exception):
    """A delivery not attempted: the host resolves to no address the allow list admits."""


def resolve(target: Target, allow: Allowlist) -> Address:
    """The address to connect to: the literal, or the first resolved address that is
    allowed (:class:`Refused` naming the first one when none is)."""
    literal = _literal(target.host)
    if literal is not None:
        candidates, by_name = [literal], False
    else:
        if not allow.name_allowed(target.host):
            raise Refused(f"{target.host} is not in PDA_CALLBACK_ALLOWED_HOSTS")
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        candidates = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
        by_name = True
    for address in candidates:
        if allow.address_allowed(address, by_name=by_name):
            return address
    raise Refused(f"{target.host} resolves to {candidates[0] if candidates else 'nothing'}, "
                  "not an address PDA_CALLBACK_ALLOWED_HOSTS allows")


class _Pinned(http.client.HTTPSConnection):
    """HTTPS to one checked address, the certificate verified against the URL's host."""

    def __init__(self, address: str, port: int, server_hostname: str, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_hostname = server_hostname
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._server_hostname)


def post(url: str, body: bytes, extra_headers: dict[str, str], allow: Allowlist,
         timeout: float) -> int:
    """POST ``body`` (JSON) to ``url`` once; the HTTP status of the answer.

    ``timeout`` bounds the connect and each read; the whole exchange is cut at twice it
    (a receiver that trickles its answer). Raises :class:`Refused` (the address is not
    allowed), ``OSError`` (refused, unreachable, timed out) or
    ``http.client.HTTPException`` (not HTTP)."""
    target = Target.of(url)
    address = str(resolve(target, allow))
    if target.scheme == "https":
        conn: http.client.HTTPConnection = _Pinned(
            address, target.port, target.host, timeout, ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(address, target.port, timeout=timeout)
    cut = threading.Timer(2 * timeout, _shutdown, args=(conn,))
    cut.daemon = True
    cut.start()
    try:
        conn.putrequest("POST", target.path, skip_host=True, skip_accept_encoding=True)
        for name, value in {"Host": target.host_header, "Content-Type": "application/json",
                            "Content-Length": str(len(body)), "User-Agent": USER_AGENT,
                            **extra_headers}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        response = conn.getresponse()
        response.read(RESPONSE_CAP)  # a small cap: the answer's body is not needed
        return response.status
    finally:
        cut.cancel()
        conn.close()


def _shutdown(conn: http.client.HTTPConnection) -> None:
    """Unblock a read that passed the whole exchange's deadline."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
