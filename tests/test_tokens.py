"""Owner and permit tokens (idempotency owners, concurrency slots, breaker probe permits)."""

from __future__ import annotations

import multiprocessing

from fintech_resilience.core import storage_keys as _keys


def _draw(n: int) -> list[str]:
    return [_keys.token() for _ in range(n)]


def test_tokens_are_unique_in_a_process_and_across_forks() -> None:
    mine = set(_draw(10_000))
    assert len(mine) == 10_000
    with multiprocessing.get_context("fork").Pool(2) as pool:
        # a forked child inherits the counter: it must draw a prefix of its own
        theirs = pool.map(_draw, [1000, 1000])
    assert len(mine | set(theirs[0]) | set(theirs[1])) == 12_000
