"""Bad input gets a clear ConfigurationError or a safe key; nothing stored is corrupted."""

from __future__ import annotations

import re

import pytest

from fintech_resilience import (
    ConcurrencyLimiter,
    ConfigurationError,
    MemoryBackend,
    RateLimiter,
    RedisBackend,
)


@pytest.mark.parametrize("spec", [
    "", " ", "ten per second", "10/fortnight", "10//second", "-1/second", "0/second",
    "10/second;;", "1e3/second", None, 10, [], ["5/second", 7],
    "10/second; " * 17,
])
def test_malformed_rate_strings(spec):
    with pytest.raises(ConfigurationError):
        RateLimiter(spec)


def test_rate_string_error_says_what_to_write():
    with pytest.raises(ConfigurationError, match="'10/second'"):
        RateLimiter("10 per fortnight")


@pytest.mark.parametrize("cost", [0, -1, 2**48 + 1, 10**30, 1.5, "3", None, True])
def test_bad_costs(cost):
    rl = RateLimiter("10/second", name="costs")
    with pytest.raises(ConfigurationError, match="cost"):
        rl.acquire("m", cost=cost)


@pytest.mark.parametrize("options", [
    {"algorithm": "leaky"}, {"name": ""}, {"name": "a b"}, {"name": "x" * 65},
    {"name": "a{b}"}, {"name": "a:b"}, {"namespace": "n*"}, {"burst": 0}, {"burst": -3},
    {"burst": 2, "algorithm": "fixed_window"}, {"on_backend_error": "ignore"},
])
def test_bad_limiter_options(options):
    with pytest.raises(ConfigurationError):
        RateLimiter("10/second", **options)


@pytest.mark.parametrize("options", [
    {"limit": 0}, {"limit": -1}, {"limit": 2.5}, {"limit": 3, "lease": 0},
    {"limit": 3, "lease": -1}, {"limit": 3, "lease": 10**9}, {"limit": 3, "name": "{x}"},
])
def test_bad_concurrency_options(options):
    with pytest.raises(ConfigurationError):
        ConcurrencyLimiter(**options)


def test_bad_memory_backend_options():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigurationError):
            MemoryBackend(max_keys=bad)


@pytest.mark.parametrize("key", ["", b"", "x" * 70_000, 1.5, None, True, ("a",)])
def test_keys_that_cannot_be_keys(backend, key):
    rl = RateLimiter("10/second", backend=backend, name="keys")
    with pytest.raises(ConfigurationError):
        rl.acquire(key)


HOSTILE = [
    "a}{b", "{victim}", "victim}", "*", "a:b:c", "line\nbreak", "tab\tkey", "ключ", "鍵",
    "\x00nul", "x" * 60_000, "victim", "victim ", " victim", "VICTIM", "{}", "}{", "\ud800",
]


def test_hostile_keys_are_isolated_and_hashed(backend):
    rl = RateLimiter("2/minute", backend=backend, name="hostile", on_backend_error="raise")
    for key in HOSTILE:
        assert rl.acquire(key).remaining == 1, key
    # each hostile key consumed only its own budget: every one has exactly one unit left
    assert [rl.acquire(key).remaining for key in HOSTILE] == [0] * len(HOSTILE)
    # and the stored keys have one safe shape: namespace, kind, {name:digest}, window seconds
    if isinstance(backend, RedisBackend):
        client = backend.client
        found = (client.keys("*", target_nodes=client.PRIMARIES)
                 if backend.topology == "cluster" else client.keys("*"))
        stored = {k.decode() for k in found}
    else:
        stored = set(backend.store.keys())
    assert len(stored) == len(HOSTILE)
    shape = re.compile(r"fr:rl\.gcra:\{hostile:[0-9a-f]{32}\}:60")
    assert all(shape.fullmatch(k) for k in stored), stored


def test_int_str_and_bytes_keys_name_the_same_tenant(backend):
    rl = RateLimiter("3/minute", backend=backend, name="types", on_backend_error="raise")
    assert rl.acquire(42).remaining == 2
    assert rl.acquire("42").remaining == 1
    assert rl.acquire(b"42").remaining == 0


def test_rejected_input_leaves_state_untouched(backend, clock):
    rl = RateLimiter("5/second; 100/day", backend=backend, name="intact", clock=clock,
                     on_backend_error="raise")
    before = rl.acquire("m")
    for bad in (0, -5, 1.5, 2**60):
        with pytest.raises(ConfigurationError):
            rl.acquire("m", cost=bad)
    after = rl.acquire("m")
    assert [s.remaining for s in before.limits] == [4, 99]
    assert [s.remaining for s in after.limits] == [3, 98]


def test_huge_cost_in_minor_units_for_velocity_limits(backend, clock):
    velocity = RateLimiter("1000000/day", backend=backend, name="velocity", clock=clock,
                           on_backend_error="raise")
    assert velocity.acquire("card", cost=999_999).remaining == 1
    refused = velocity.acquire("card", cost=2)
    assert not refused.allowed and refused.remaining == 1
    assert velocity.acquire("card", cost=1).remaining == 0


def test_a_bool_key_is_refused_even_after_the_int_it_equals(backend):
    """True == 1 and hashes alike: no cache may hand True the counter of 1."""
    rl = RateLimiter("10/second", backend=backend, name="boolkeys")
    assert rl.acquire(1).allowed
    assert rl.acquire(1).allowed
    with pytest.raises(ConfigurationError, match="str, bytes or int"):
        rl.acquire(True)
    with pytest.raises(ConfigurationError, match="str, bytes or int"):
        rl.acquire(False)
