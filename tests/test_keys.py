"""Client identity: principal first, client IP only through trusted proxies, rightmost hop."""

from __future__ import annotations

import ipaddress

import pytest
from starlette.requests import Request
from werkzeug.test import EnvironBuilder

from fintech_resilience.errors import ConfigurationError
from fintech_resilience.keys import client_ip, forwarded_hops, principal_or_ip

NETS = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


def scope(peer: str | None = "203.0.113.7", headers: list[tuple[bytes, bytes]] = (),
          **extra: object) -> dict:
    return {"type": "http", "method": "GET", "path": "/", "headers": list(headers),
            "client": (peer, 5555) if peer else None, **extra}


def xff(value: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", value.encode())]


class TestClientIp:
    def test_an_untrusted_peer_is_the_client_whatever_it_forwards(self):
        assert str(client_ip("198.51.100.1", "1.1.1.1, 2.2.2.2", NETS)) == "198.51.100.1"

    def test_behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client(self):
        got = client_ip("10.0.0.2", "6.6.6.6, 7.7.7.7, 203.0.113.9, 10.0.0.1", NETS)
        assert str(got) == "203.0.113.9"

    def test_the_leftmost_entry_is_never_used_when_a_later_hop_is_untrusted(self):
        got = client_ip("10.0.0.2", "10.9.9.9, 203.0.113.9", NETS)
        assert str(got) == "203.0.113.9"

    def test_all_hops_trusted_means_the_peer_never_the_leftmost_hop(self):
        assert str(client_ip("10.0.0.2", "10.0.0.7, 10.0.0.1", NETS)) == "10.0.0.2"

    def test_no_header_from_a_trusted_peer_means_the_peer(self):
        assert str(client_ip("10.0.0.2", None, NETS)) == "10.0.0.2"

    def test_a_hop_that_is_not_an_address_stops_at_the_nearest_trusted_one(self):
        assert str(client_ip("10.0.0.2", "9.9.9.9, unknown, 10.0.0.1", NETS)) == "10.0.0.1"

    def test_ports_brackets_and_mapped_addresses_are_normalised(self):
        assert str(client_ip("10.0.0.2", "203.0.113.9:4711", NETS)) == "203.0.113.9"
        assert str(client_ip("10.0.0.2", "[2001:db8::1]:443", NETS)) == "2001:db8::1"
        assert str(client_ip("::ffff:10.0.0.2", "::ffff:203.0.113.9", NETS)) == "203.0.113.9"

    def test_forwarded_rfc7239_for_parameters(self):
        value = 'for=6.6.6.6;proto=http, For="[2001:db8:cafe::17]:4711";by=10.0.0.1, for=10.0.0.3'
        assert forwarded_hops(value, "forwarded") == ["6.6.6.6", '"[2001:db8:cafe::17]:4711"',
                                                       "10.0.0.3"]
        assert str(client_ip("10.0.0.2", value, NETS, header="forwarded")) == "2001:db8:cafe::17"

    def test_unix_socket_peer_is_trusted_only_when_configured(self):
        assert client_ip(None, "203.0.113.9", NETS) is None
        got = client_ip(None, "6.6.6.6, 203.0.113.9", NETS, trust_unix_socket=True)
        assert str(got) == "203.0.113.9"


class TestPrincipalOrIp:
    def test_forwarded_header_is_ignored_without_trusted_proxies(self):
        key = principal_or_ip()
        assert key(scope("203.0.113.7", xff("1.2.3.4"))) == "ip:203.0.113.7"

    def test_an_untrusted_peers_x_forwarded_for_does_not_change_its_key(self):
        key = principal_or_ip(trusted_proxies=["10.0.0.0/8"])
        keys = {key(scope("198.51.100.1", xff(f"1.2.3.{i}, 10.0.0.{i}"))) for i in range(200)}
        assert keys == {"ip:198.51.100.1"}

    def test_trusted_cidrs_pick_the_right_hop_on_asgi_and_wsgi(self):
        key = principal_or_ip(trusted_proxies=["10.0.0.0/8"])
        assert key(scope("10.0.0.2", xff("6.6.6.6, 203.0.113.9"))) == "ip:203.0.113.9"
        environ = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.9"}
        assert key(environ) == "ip:203.0.113.9"

    def test_several_header_lines_are_one_list_in_order(self):
        key = principal_or_ip(trusted_proxies=["10.0.0.0/8"])
        headers = [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"203.0.113.9")]
        assert key(scope("10.0.0.2", headers)) == "ip:203.0.113.9"

    def test_forwarded_header_when_configured(self):
        key = principal_or_ip(trusted_proxies=["10.0.0.0/8"], header="Forwarded")
        headers = [(b"forwarded", b"for=6.6.6.6, for=203.0.113.9"), *xff("8.8.8.8")]
        assert key(scope("10.0.0.2", headers)) == "ip:203.0.113.9"

    def test_ipv6_clients_are_grouped_by_their_64(self):
        key = principal_or_ip()
        assert key(scope("2001:db8:1:2:aaaa::1")) == "ip:2001:db8:1:2::/64"
        assert key(scope("2001:db8:1:2:bbbb::9")) == "ip:2001:db8:1:2::/64"
        assert principal_or_ip(ipv6_prefix=None)(scope("2001:db8::1")) == "ip:2001:db8::1"

    def test_a_million_spoofed_forwarded_identities_are_one_key(self):
        # through an untrusted peer and from inside one IPv6 /64: no new key, no new memory
        key = principal_or_ip(trusted_proxies=["10.0.0.0/8"])
        base = scope("198.51.100.1")
        seen = set()
        for i in range(1_000_000):
            base["headers"] = [(b"x-forwarded-for", f"{i >> 16}.{(i >> 8) & 255}.{i & 255}.1"
                                .encode())]
            seen.add(key(base))
        v6 = ipaddress.IPv6Address("2001:db8:1:2::")
        for i in range(20_000):
            base["client"] = (str(v6 + i * 7919), 1)
            base["headers"] = []
            seen.add(key(base))
        assert seen == {"ip:198.51.100.1", "ip:2001:db8:1:2::/64"}

    def test_principal_comes_first_in_its_documented_order(self):
        key = principal_or_ip(trusted_proxies=["10.0.0.0/8"])
        assert key(scope(state={"principal": "m-42"})) == "p:m-42"
        assert key({"REMOTE_ADDR": "1.2.3.4", "fintech_resilience.principal": "m-1"}) == "p:m-1"
        assert key({"REMOTE_ADDR": "1.2.3.4", "REMOTE_USER": "alice"}) == "p:alice"
        by_callable = principal_or_ip(principal=lambda r: "from-jwt")
        assert by_callable(scope(state={"principal": "m-42"})) == "p:from-jwt"
        nobody = principal_or_ip(principal=lambda r: None)
        assert nobody(scope("203.0.113.7")) == "ip:203.0.113.7"

    def test_authenticated_users_of_starlette_and_django(self):
        class StarletteUser:
            is_authenticated = True
            identity = "u-7"

        class Anonymous:
            is_authenticated = False
            pk = None

        class DjangoUser:
            is_authenticated = True
            pk = 99

        class DjangoRequest:
            def __init__(self, user: object) -> None:
                self.META = {"REMOTE_ADDR": "203.0.113.5"}
                self.user = user

        key = principal_or_ip()
        assert key(scope(user=StarletteUser())) == "p:u-7"
        assert key(scope("203.0.113.7", user=Anonymous())) == "ip:203.0.113.7"
        assert key(DjangoRequest(DjangoUser())) == "p:99"
        assert key(DjangoRequest(Anonymous())) == "ip:203.0.113.5"

    def test_principal_header_is_read_only_when_configured(self):
        headers = [(b"x-authenticated-user", b"alice")]
        assert principal_or_ip()(scope("203.0.113.7", headers)) == "ip:203.0.113.7"
        key = principal_or_ip(principal_header="X-Authenticated-User")
        assert key(scope("203.0.113.7", headers)) == "p:alice"
        assert key({"REMOTE_ADDR": "1.2.3.4", "HTTP_X_AUTHENTICATED_USER": "bob"}) == "p:bob"

    def test_framework_request_objects(self):
        key = principal_or_ip(trusted_proxies=["10.0.0.0/8"])
        assert key(Request(scope("10.0.0.2", xff("6.6.6.6, 203.0.113.9")))) == "ip:203.0.113.9"
        environ = EnvironBuilder(headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.8"},
                                 environ_base={"REMOTE_ADDR": "10.0.0.2"}).get_environ()
        from werkzeug.wrappers import Request as WRequest

        assert key(WRequest(environ)) == "ip:203.0.113.8"
        with pytest.raises(ConfigurationError, match="ASGI scope"):
            key(object())

    def test_unix_socket_and_made_up_peers(self):
        assert principal_or_ip()(scope(None)) == "ip:unknown"
        assert principal_or_ip()(scope("testclient")) == "ip:testclient"
        key = principal_or_ip(trusted_proxies=["unix"])
        assert key(scope(None, xff("6.6.6.6, 203.0.113.9"))) == "ip:203.0.113.9"

    def test_a_remembered_anonymous_peer_still_yields_to_a_principal(self):
        """The per-peer memo of anonymous ASGI keys never hides a principal or a trusted hop."""
        key = principal_or_ip(trusted_proxies=["10.0.0.0/8"])

        class User:
            is_authenticated = True
            identity = "u-9"

        for _ in range(2):  # the second round is answered from the memo where it may be
            assert key(scope("203.0.113.7")) == "ip:203.0.113.7"
            assert key(scope("203.0.113.7", xff("6.6.6.6"))) == "ip:203.0.113.7"
            assert key(scope("203.0.113.7", state={})) == "ip:203.0.113.7"
            assert key(scope("203.0.113.7", state={"principal": "m-1"})) == "p:m-1"
            assert key(scope("203.0.113.7", user=User())) == "p:u-9"
            # a trusted peer is never memoised: each request's forwarded hop counts
            assert key(scope("10.0.0.2", xff("198.51.100.1"))) == "ip:198.51.100.1"
            assert key(scope("10.0.0.2", xff("198.51.100.2"))) == "ip:198.51.100.2"
            assert key(scope("10.0.0.2")) == "ip:10.0.0.2"
        by_header = principal_or_ip(principal_header="X-Authenticated-User")
        for _ in range(2):
            assert by_header(scope("203.0.113.7")) == "ip:203.0.113.7"
            assert by_header(scope("203.0.113.7", [(b"x-authenticated-user", b"al")])) == "p:al"

    @pytest.mark.parametrize(("kwargs", "message"), [
        ({"trusted_proxies": "10.0.0.0/8"}, "list of CIDRs"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "CIDRs such as"),
        ({"header": "X-Real-IP"}, "X-Forwarded-For"),
        ({"ipv6_prefix": 0}, "ipv6_prefix"),
        ({"principal": "user"}, "callable"),
    ])
    def test_bad_configuration_says_what_to_write(self, kwargs, message):
        with pytest.raises(ConfigurationError, match=message):
            principal_or_ip(**kwargs)
