"""Client identity for the HTTP edges: who is this request, for rate limiting and shedding?

The answer is the **authenticated principal** when there is one, else the **client IP**. The IP
is taken from a forwarding header (``X-Forwarded-For`` or ``Forwarded``) *only* when the TCP peer
is one of your proxies (``trusted_proxies``, a list of CIDRs). The header is then read from the
right: each hop a trusted proxy appended is skipped, and the first hop that is not a trusted
proxy is the client. Everything to the left of that hop was written by the client itself and is
never used, so a client cannot pick its own key by sending ``X-Forwarded-For: 1.2.3.4``. When
every hop is a trusted address, the TCP peer is the client's identity (the leftmost hop may be
text the client wrote, so it is never used).

>>> from fintech_resilience.keys import principal_or_ip
>>> key = principal_or_ip(trusted_proxies=["10.0.0.0/8"])
>>> key({"type": "http", "client": ("10.0.0.5", 1234),
...      "headers": [(b"x-forwarded-for", b"6.6.6.6, 203.0.113.9")]})
'ip:203.0.113.9'

The same key function reads an ASGI scope, a WSGI environ (also Django's ``request.META``) and
the request objects of Starlette/FastAPI (``.scope``), Flask/Werkzeug (``.environ``) and Django
(``.META``, and ``request.user`` for the principal).

IPv6 clients are grouped by their /64 network by default (``ipv6_prefix``): one subscriber usually
holds a whole /64, so per-address keys would let it rotate through 2**64 identities.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from .errors import ConfigurationError

__all__ = ["ClientKey", "client_ip", "forwarded_hops", "principal_or_ip"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The WSGI environ key (and ASGI ``scope["state"]`` key) an auth layer can set to the principal.
PRINCIPAL_ENVIRON_KEY: Final = "fintech_resilience.principal"
_MAX_HOPS: Final = 64
_MAX_PRINCIPAL: Final = 512
_CACHE_SIZE: Final = 4096
_HEADERS: Final = ("x-forwarded-for", "forwarded")


def _parse_ip(text: str) -> IPAddress | None:
    """An address from a hop as proxies write it: ``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``."""
    text = text.strip().strip('"').strip()
    if not text:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port (bare IPv6 has several colons)
        text = text.split(":", 1)[0]
    if "%" in text:  # an IPv6 zone id names a local interface, not a client
        text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forwarded_hops(value: str, header: str = "x-forwarded-for") -> list[str]:
    """The hops of a forwarding header value, left (farthest) to right (nearest), as written.

    ``header`` is ``"x-forwarded-for"`` (comma-separated addresses) or ``"forwarded"``
    (RFC 7239: the ``for=`` parameter of each element). At most the 64 rightmost hops are kept.
    """
    parts = value.split(",")[-_MAX_HOPS:]
    if header == "forwarded":
        hops = []
        for element in parts:
            found = ""
            for pair in element.split(";"):
                name, _, val = pair.partition("=")
                if name.strip().lower() == "for":
                    found = val.strip()
            hops.append(found)
        return hops
    return [p.strip() for p in parts]


def _trusted(address: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    return address is not None and any(address in net for net in networks)


def client_ip(peer: str | None, forwarded: str | None, trusted_proxies: Sequence[IPNetwork],
              *, header: str = "x-forwarded-for", trust_unix_socket: bool = False
              ) -> IPAddress | None:
    """The client's address: the TCP peer, or the rightmost untrusted hop behind trusted proxies.

    :param peer: the TCP peer address (``None`` for a Unix socket).
    :param forwarded: the forwarding header's value (all occurrences joined with ``,``) or None.
    :param trusted_proxies: networks of your own proxies and load balancers.
    :param trust_unix_socket: treat a Unix-socket peer (no address) as a trusted proxy.

    When a trusted proxy wrote a hop that is not an address (``unknown``, an obfuscated id), the
    nearest trusted address is returned: the client cannot be told apart, and its own text is
    never used as its identity. When every hop is trusted, the peer is returned (behind a
    trusted Unix socket, the hop that proxy wrote): the leftmost hop is never used. ``None``
    only when the peer is unknown and not trusted.
    """
    peer_ip = _parse_ip(peer) if peer else None
    if peer_ip is None and not (peer is None and trust_unix_socket):
        return peer_ip
    if peer_ip is not None and not _trusted(peer_ip, trusted_proxies):
        return peer_ip
    if not forwarded:
        return peer_ip
    hops = forwarded_hops(forwarded, header)
    nearest = peer_ip
    for hop in reversed(hops):
        address = _parse_ip(hop)
        if address is None:
            return nearest
        if not _trusted(address, trusted_proxies):
            return address
        nearest = address
    # Every hop is in a trusted network: nothing proves which of them a proxy wrote, and the
    # leftmost may be the client's own text. The peer is the one address nobody wrote.
    return peer_ip if peer_ip is not None else _parse_ip(hops[-1])


def _networks(cidrs: Iterable[str]) -> tuple[tuple[IPNetwork, ...], bool]:
    if isinstance(cidrs, str):
        raise ConfigurationError(
            f"trusted_proxies is a list of CIDRs; write trusted_proxies=[{cidrs!r}]"
        )
    networks: list[IPNetwork] = []
    unix = False
    for cidr in cidrs:
        if cidr == "unix":
            unix = True
            continue
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"trusted_proxies entries are CIDRs such as '10.0.0.0/8', '192.168.1.7' or"
                f" 'fd00::/8' (or 'unix' for a proxy on a Unix socket); got {cidr!r}"
            ) from exc
    return tuple(networks), unix


def _as_mapping(request: Any) -> tuple[str, Mapping[str, Any], Any]:
    """(kind, mapping, request) for a scope, an environ or a framework request object."""
    if type(request) is dict or isinstance(request, Mapping):
        return ("asgi" if "type" in request and "headers" in request else "wsgi"), request, None
    meta = getattr(request, "META", None)  # Django (also its ASGIRequest), DRF's Request
    if isinstance(meta, Mapping):
        return "wsgi", meta, request
    scope = getattr(request, "scope", None)  # Starlette / FastAPI
    if isinstance(scope, Mapping):
        return "asgi", scope, request
    environ = getattr(request, "environ", None)  # Flask / Werkzeug
    if isinstance(environ, Mapping):
        return "wsgi", environ, request
    raise ConfigurationError(
        f"a key function receives an ASGI scope, a WSGI environ or a request object wrapping one;"
        f" got {type(request).__name__}"
    )


def _user_principal(user: Any) -> str | None:
    """The id of an authenticated Starlette ``scope["user"]`` or Django ``request.user``."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    pk = getattr(user, "pk", None)  # Django
    if pk is not None:
        return str(pk)
    try:
        identity = user.identity  # Starlette BaseUser
    except (AttributeError, NotImplementedError):
        identity = getattr(user, "display_name", None)
    return str(identity) if identity else None


def _asgi_header(scope: Mapping[str, Any], name: bytes) -> str | None:
    values = [v for k, v in scope.get("headers", ()) if k.lower() == name]
    if not values:
        return None
    return b",".join(values).decode("latin-1")


class ClientKey:
    """A key function: ``"p:<principal>"`` for an authenticated caller, else ``"ip:<address>"``.

    Build it with :func:`principal_or_ip`. Call it with an ASGI scope, a WSGI environ or a
    framework request; it never returns the leftmost ``X-Forwarded-For`` entry.
    """

    __slots__ = ("_anonymous", "_cache", "_environ_header", "_header", "_header_bytes",
                 "_ipv6_prefix", "_networks", "_principal", "_principal_header", "_unix")

    def __init__(self, *, trusted_proxies: Iterable[str] = (), header: str = "X-Forwarded-For",
                 principal: Callable[[Any], str | None] | None = None,
                 principal_header: str | None = None, ipv6_prefix: int | None = 64) -> None:
        self._networks, self._unix = _networks(trusted_proxies)
        self._header = header.lower() if isinstance(header, str) else ""
        if self._header not in _HEADERS:
            raise ConfigurationError(
                f"header must be 'X-Forwarded-For' or 'Forwarded'; got {header!r}"
            )
        self._header_bytes = self._header.encode()
        self._environ_header = "HTTP_" + self._header.upper().replace("-", "_")
        if principal is not None and not callable(principal):
            raise ConfigurationError("principal must be a callable(request) -> str | None")
        self._principal = principal
        if principal_header is not None and not isinstance(principal_header, str):
            raise ConfigurationError("principal_header must be a header name such as 'X-User-Id'")
        self._principal_header = principal_header.lower() if principal_header else None
        if ipv6_prefix is not None and (type(ipv6_prefix) is not int
                                        or not 1 <= ipv6_prefix <= 128):
            raise ConfigurationError(f"ipv6_prefix must be 1..128 or None; got {ipv6_prefix!r}")
        self._ipv6_prefix = ipv6_prefix
        # (peer, forwarded header) -> address text: peers repeat, parsing addresses does not pay
        self._cache: dict[tuple[str | None, str | None], str] = {}
        # ASGI peer -> "ip:<address>" of an anonymous request from an untrusted peer (its key
        # depends on the peer alone); None when a principal callable or header must be read
        self._anonymous: dict[str, str] | None = (
            {} if principal is None and principal_header is None else None)

    def principal(self, request: Any) -> str | None:
        """The authenticated principal of ``request``, or None for an anonymous caller."""
        return self._principal_of(request, *_as_mapping(request))

    def _principal_of(self, request: Any, kind: str, mapping: Mapping[str, Any],
                      obj: Any) -> str | None:
        if self._principal is not None:
            found = self._principal(request)
            if found:
                return str(found)[:_MAX_PRINCIPAL]
        if kind == "asgi":
            state = mapping.get("state")
            found = state.get("principal") if isinstance(state, Mapping) else None
            found = found or _user_principal(mapping.get("user"))
            if not found and self._principal_header:
                found = _asgi_header(mapping, self._principal_header.encode())
        else:
            found = mapping.get(PRINCIPAL_ENVIRON_KEY) or mapping.get("REMOTE_USER")
            if not found and obj is not None:
                found = _user_principal(getattr(obj, "user", None))
            if not found and self._principal_header:
                name = "HTTP_" + self._principal_header.upper().replace("-", "_")
                found = mapping.get(name)
        return str(found)[:_MAX_PRINCIPAL] if found else None

    def ip(self, request: Any) -> str:
        """The client address as used in keys (IPv6 grouped by ``ipv6_prefix``), or ``unknown``."""
        return self._ip_of(*_as_mapping(request)[:2])

    def _ip_of(self, kind: str, mapping: Mapping[str, Any]) -> str:
        if kind == "asgi":
            client = mapping.get("client")
            peer = str(client[0]) if client else None
        else:
            peer = mapping.get("REMOTE_ADDR") or None
        # an untrusted peer's answer depends on the peer alone ("" marks a trusted peer), so
        # varying its forwarding header costs it nothing and evicts nothing
        final = self._cache.get((peer, None))
        if final is None:
            peer_ip = _parse_ip(peer) if peer else None
            trusted = (_trusted(peer_ip, self._networks) if peer_ip is not None
                       else peer is None and self._unix)
            final = "" if trusted else self._address_text(peer, None)
            self._remember((peer, None), final)
        if final:
            return final
        if kind == "asgi":
            forwarded = _asgi_header(mapping, self._header_bytes)
        else:
            forwarded = mapping.get(self._environ_header)
        if not forwarded:
            return self._address_text(peer, None)
        text = self._cache.get((peer, forwarded))
        if text is None:
            text = self._address_text(peer, forwarded)
            self._remember((peer, forwarded), text)
        return text

    def _remember(self, key: tuple[str | None, str | None], text: str) -> None:
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[key] = text

    def _address_text(self, peer: str | None, forwarded: str | None) -> str:
        address = client_ip(peer, forwarded, self._networks, header=self._header,
                            trust_unix_socket=self._unix)
        if address is None:  # a Unix socket, or a test client's made-up peer name
            return peer[:_MAX_PRINCIPAL] if peer else "unknown"
        if (isinstance(address, ipaddress.IPv6Address) and self._ipv6_prefix is not None
                and self._ipv6_prefix < 128):
            mask = ((1 << self._ipv6_prefix) - 1) << (128 - self._ipv6_prefix)
            return f"{ipaddress.IPv6Address(int(address) & mask)}/{self._ipv6_prefix}"
        return str(address)

    def __call__(self, request: Any) -> str:
        anonymous = self._anonymous
        if (anonymous is not None and type(request) is dict and not request.get("state")
                and request.get("user") is None and "headers" in request and "type" in request):
            # an ASGI scope with no principal in it: the peer decides, when it is untrusted
            client = request.get("client")
            if client and type(client[0]) is str:
                known = anonymous.get(client[0])
                if known is not None:
                    return known
                found = f"ip:{self._ip_of('asgi', request)}"
                if self._cache.get((client[0], None)):  # untrusted: its headers do not count
                    if len(anonymous) >= _CACHE_SIZE:
                        anonymous.clear()
                    anonymous[client[0]] = found
                return found
        kind, mapping, obj = _as_mapping(request)
        principal = self._principal_of(request, kind, mapping, obj)
        return f"p:{principal}" if principal is not None else f"ip:{self._ip_of(kind, mapping)}"

    def __repr__(self) -> str:
        nets = [str(n) for n in self._networks] + (["unix"] if self._unix else [])
        return f"principal_or_ip(trusted_proxies={nets!r}, header={self._header!r})"


def principal_or_ip(trusted_proxies: Iterable[str] = (), *, header: str = "X-Forwarded-For",
                    principal: Callable[[Any], str | None] | None = None,
                    principal_header: str | None = None,
                    ipv6_prefix: int | None = 64) -> ClientKey:
    """A key function: the authenticated principal first, else the client IP.

    :param trusted_proxies: CIDRs of your reverse proxies / load balancers (``"10.0.0.0/8"``,
        ``"fd00::/8"``, ``"unix"`` for a proxy on a Unix socket). Empty (the default): forwarding
        headers are ignored and the TCP peer is the client.
    :param header: ``"X-Forwarded-For"`` (default) or ``"Forwarded"`` (RFC 7239) - whichever
        your nearest proxy *appends* to. Only this one header is read.
    :param principal: ``callable(request) -> str | None`` tried first (e.g. reads your JWT claims).
    :param principal_header: a header your auth layer sets *after* stripping it from the client's
        request (e.g. ``"X-Authenticated-User"``); ignored unless given.
    :param ipv6_prefix: IPv6 clients are keyed by this network prefix (default /64; ``None`` or
        ``128`` for per-address keys).

    Principals are found, in order, from ``principal``, an ASGI ``scope["state"]["principal"]``
    or authenticated ``scope["user"]``, a WSGI ``environ["fintech_resilience.principal"]`` or
    ``REMOTE_USER``, Django's authenticated ``request.user`` (its ``pk``), then
    ``principal_header``.
    """
    return ClientKey(trusted_proxies=trusted_proxies, header=header, principal=principal,
                     principal_header=principal_header, ipv6_prefix=ipv6_prefix)
