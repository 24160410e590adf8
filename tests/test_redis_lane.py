"""Asyncio decisions go through one pipelined connection per node and event loop (the lane).

What redis-py's pool guaranteed must hold for the lane too: replies are never handed to the
wrong caller (timeouts, cancellations, dropped connections), the connection setup speaks as the
client would (AUTH with a user, SELECT, CLIENT SETNAME), scripts are reloaded after SCRIPT
FLUSH, and no socket outlives its event loop.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings

import pytest
import redis
import servers
from hypothesis import given
from hypothesis import strategies as st

from fintech_resilience import BackendUnavailable, RateLimiter, RedisBackend
from fintech_resilience.backends.redis import Settings
from fintech_resilience.backends.redis._lane import WRITE_AT, Lane
from fintech_resilience.backends.redis._resp import Commands, PyReader, py_pack_command
from fintech_resilience.backends.redis._settings import ConnectionSettings, LaneSettings

pytestmark = pytest.mark.redis


def settings_of(backend: RedisBackend) -> LaneSettings:
    """The lane settings of a standalone backend's node."""
    return backend._topology.node_for("").lane_settings()


def _limiter(url: str, *, timeout: float = 1.0, **options) -> RateLimiter:
    # 1000/hour: nothing refills during a test, so each decision's remaining is exact
    backend = RedisBackend.from_url(url, timeout=timeout, **options)
    return RateLimiter("1000/hour", backend=backend, name="lane", on_backend_error="raise")


async def test_decisions_share_one_connection_and_setup_speaks_as_the_client(
        redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.acl_setuser("lane-user", enabled=True, passwords=["+s3cret"], keys=["*"],
                      commands=["+@all"])
    host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
    url = f"redis://lane-user:s3cret@{host_port}/3"
    rl = _limiter(url, client_name="lane-test")
    try:
        decisions = await asyncio.gather(*(rl.aacquire(f"k{i % 3}") for i in range(30)))
        assert sorted(d.remaining for d in decisions) == sorted(
            r for k in range(3) for r in range(990, 1000))
        (conn,) = servers.connections_named(redis_url, "lane-test")  # one connection for all 30
        assert conn["user"] == "lane-user" and int(conn["db"]) == 3
        assert admin.dbsize() == 0  # the keys went to db 3
        assert redis.Redis.from_url(f"redis://{host_port}/3").dbsize() == 3
    finally:
        await rl.backend.aclose()
        admin.acl_deluser("lane-user")
        redis.Redis.from_url(f"redis://{host_port}/3").flushdb()
        admin.close()
    assert servers.all_closed(redis_url, "lane-test")  # aclose() closed it


async def test_a_late_reply_fails_its_callers_and_never_reaches_another(redis_url: str) -> None:
    rl = _limiter(redis_url, timeout=0.2)
    admin = redis.Redis.from_url(redis_url)
    try:
        assert (await rl.aacquire("a")).remaining == 999
        admin.execute_command("CLIENT", "PAUSE", 700, "ALL")
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            await rl.aacquire("a")
        assert time.monotonic() - started < 0.6  # the timeout, not the pause, ended the wait
        admin.execute_command("CLIENT", "UNPAUSE")
        rl.backend.health.success()  # let the next call through at once
        # a late reply to "a" would say 998; "b" gets its own answer on a new connection
        assert (await rl.aacquire("b")).remaining == 999
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
        await rl.backend.aclose()


async def test_a_cancelled_caller_leaves_the_connection_in_step(redis_url: str) -> None:
    rl = _limiter(redis_url)
    try:
        assert (await rl.aacquire("warm")).allowed  # the connection is open
        waiting = asyncio.ensure_future(rl.aacquire("a"))
        await asyncio.sleep(0)  # the command is queued...
        waiting.cancel()  # ...and its caller gives up before the reply
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert (await rl.aacquire("b")).remaining == 999  # b's own reply, not a's
        assert (await rl.aacquire("a")).remaining in (998, 999)  # a ran once at most
    finally:
        await rl.backend.aclose()


async def test_a_connection_the_server_closed_is_replaced(redis_url: str) -> None:
    rl = _limiter(redis_url, client_name="lane-kill")
    admin = redis.Redis.from_url(redis_url)
    try:
        assert (await rl.aacquire("k")).remaining == 999
        (before,) = servers.connections_named(redis_url, "lane-kill")
        admin.client_kill_filter(_id=before["id"])
        for _ in range(50):  # the lane learns of the close from the event loop
            await asyncio.sleep(0.01)
        decision = await rl.aacquire("k")
        assert decision.remaining == 998 and decision.fallback is None
        (after,) = servers.connections_named(redis_url, "lane-kill")
        assert after["id"] != before["id"]
    finally:
        admin.close()
        await rl.backend.aclose()


async def test_scripts_are_reloaded_after_script_flush(redis_url: str) -> None:
    rl = _limiter(redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        assert (await rl.aacquire("k")).remaining == 999
        admin.script_flush()
        decisions = await asyncio.gather(*(rl.aacquire("k") for _ in range(5)))
        assert sorted(d.remaining for d in decisions) == [994, 995, 996, 997, 998]
    finally:
        admin.close()
        await rl.backend.aclose()


def test_no_socket_outlives_its_event_loop(redis_url: str) -> None:
    rl = _limiter(redis_url, client_name="lane-loop")

    async def decide() -> int:
        return (await rl.aacquire("k")).remaining

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        assert asyncio.run(decide()) == 999  # no aclose(): the loop's shutdown closes the lane
        assert asyncio.run(decide()) == 998  # a new loop, a new connection
        gc.collect()
    assert servers.all_closed(redis_url, "lane-loop")
    rl.backend.close()


async def test_a_lane_refuses_calls_once_closed(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, timeout=1.0)
    lane = await Lane.open(settings_of(backend))
    assert await lane.call(("PING",)) == b"PONG"
    lane.close()
    with pytest.raises(redis.ConnectionError):
        await lane.call(("PING",))
    await backend.aclose()


async def test_queued_commands_go_out_in_groups_and_late_groups_time_out(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, timeout=0.3)
    admin = redis.Redis.from_url(redis_url)
    lane = await Lane.open(settings_of(backend))
    try:
        first = [lane.call(("INCR", "grouped")) for _ in range(WRITE_AT + 2)]
        # without yielding to the loop: the first command went out alone (nothing was in
        # flight), the next WRITE_AT as a group; the last waits for the end of the iteration
        deadline = time.monotonic() + 2
        # (blocking on purpose: the event loop must not run meanwhile)
        while int(admin.get("grouped") or 0) < WRITE_AT + 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # noqa: ASYNC251
        time.sleep(0.05)  # noqa: ASYNC251 - room for a command that should not go out
        assert int(admin.get("grouped") or 0) == WRITE_AT + 1
        assert await asyncio.gather(*first) == list(range(1, WRITE_AT + 3))
        # a paused server: every outstanding group fails at the timeout of the oldest write
        admin.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        late = [lane.call(("INCR", "grouped")) for _ in range(3 * WRITE_AT)]
        started = time.monotonic()
        results = await asyncio.gather(*late, return_exceptions=True)
        assert time.monotonic() - started < 0.9
        assert all(isinstance(r, redis.TimeoutError) for r in results), results
        assert lane.closed
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.delete("grouped")
        admin.close()
        lane.close()
        await backend.aclose()


async def test_a_lane_keeps_the_clients_tcp_keepalive(redis_url: str) -> None:
    """The lane stands in for the asyncio client: its socket gets the keepalive options a
    redis-py connection of that client gets - configured ones, and redis-py's defaults."""
    import socket

    names = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE), (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
             (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL), (socket.IPPROTO_TCP, socket.TCP_KEEPCNT)]

    def options(sock: socket.socket) -> list[int]:
        return [sock.getsockopt(level, name) for level, name in names]

    clients = {
        "configured": redis.asyncio.Redis.from_url(
            redis_url, socket_timeout=1.0, socket_keepalive=True,
            socket_keepalive_options={socket.TCP_KEEPIDLE: 45, socket.TCP_KEEPINTVL: 7}),
        "off": redis.asyncio.Redis.from_url(redis_url, socket_timeout=1.0,
                                            socket_keepalive=False),
        "defaults": redis.asyncio.Redis.from_url(redis_url, socket_timeout=1.0),
    }
    seen = {}
    for label, client in clients.items():
        pool = client.connection_pool
        settings = ConnectionSettings.from_pool(pool.connection_class, pool.connection_kwargs,
                                                Settings(timeout=1.0)).lane()
        conn = await client.connection_pool.get_connection()
        lane = await Lane.open(settings)
        try:
            ours = options(lane._transport.get_extra_info("socket"))  # type: ignore[union-attr]
            theirs = options(conn._writer.get_extra_info("socket"))
            assert ours == theirs, label
            assert await lane.call(("PING",)) == b"PONG"
            seen[label] = ours
        finally:
            lane.close()
            await client.connection_pool.release(conn)
            await client.aclose()
    assert seen["configured"][:3] == [1, 45, 7]
    assert seen["off"][0] == 0


_ARG = st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1),
                 st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
                 st.binary(max_size=20))


@given(sha=st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
       key=st.text(min_size=1, max_size=40), args=st.lists(_ARG, max_size=6))
def test_a_repeated_evalsha_is_the_command_hiredis_would_pack(sha: str, key: str,
                                                              args: list[object]) -> None:
    import hiredis

    commands = Commands()
    constant = tuple(args)
    expected = hiredis.pack_command(("EVALSHA", sha, 1, key, *args))
    assert commands.evalsha(sha, [key], constant) == expected  # first sighting: packed whole
    assert commands.evalsha(sha, [key], constant) == expected  # second: encoded in parts
    assert commands.evalsha(sha, [key], constant) == expected  # then: from the kept parts
    assert py_pack_command(("EVALSHA", sha, 1, key, *args)) == expected
    other = sha[::-1]
    assert commands.evalsha(other, [key], constant) == hiredis.pack_command(
        ("EVALSHA", other, 1, key, *args))  # another script: encoded again


def test_repeated_arguments_that_resp_cannot_carry_are_refused_every_time() -> None:
    commands = Commands(pack=py_pack_command)
    for args in ((True,), (None,)):
        for _ in range(3):
            with pytest.raises(TypeError):
                commands.evalsha("0" * 40, ["k"], args)


_REPLY = st.recursive(
    st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.binary(max_size=30),
              st.none(), st.text(alphabet="abcXYZ 012", min_size=1, max_size=20).map(
                  lambda t: ("error", t))),
    lambda inner: st.lists(inner, max_size=4), max_leaves=12)


def _resp(reply: object) -> bytes:
    if isinstance(reply, tuple):
        return b"-%s\r\n" % reply[1].encode()
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    if isinstance(reply, bytes):
        return b"$%d\r\n%s\r\n" % (len(reply), reply)
    if reply is None:
        return b"$-1\r\n"
    assert isinstance(reply, list)
    return b"*%d\r\n%s" % (len(reply), b"".join(map(_resp, reply)))


def _plain(reply: object) -> object:
    if isinstance(reply, Exception):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [_plain(r) for r in reply]
    return reply


@given(replies=st.lists(_REPLY, min_size=1, max_size=5), cut=st.integers(min_value=1))
def test_the_python_reader_reads_as_hiredis_does(replies: list[object], cut: int) -> None:
    """Without hiredis the lane parses replies in Python: the same values, fed in any pieces."""
    import hiredis

    data = b"".join(map(_resp, replies))
    ours, theirs = PyReader(), hiredis.Reader()
    at = cut % len(data)
    got: list[object] = []
    expected: list[object] = []
    for piece in (data[:at], data[at:]):
        ours.feed(piece)
        theirs.feed(piece)
        while (reply := ours.gets()) is not False:
            got.append(_plain(reply))
        while (reply := theirs.gets()) is not False:
            expected.append(_plain(reply))
    assert got == expected == [_plain(r) for r in replies]


async def test_a_lane_without_hiredis_decides_the_same(redis_url: str) -> None:
    backend = RedisBackend.from_url(redis_url, timeout=1.0)
    lane = await Lane.open(settings_of(backend), pack=py_pack_command, reader=PyReader)
    try:
        replies = await asyncio.gather(*(lane.call(("INCR", "py")) for _ in range(20)),
                                       lane.call(("NOSUCHCOMMAND",)), lane.call(("GET", "none")))
        assert replies[:20] == list(range(1, 21))
        assert isinstance(replies[20], Exception) and "unknown command" in str(replies[20])
        assert replies[21] is None
    finally:
        lane.close()
        await backend.aclose()


async def test_decisions_at_cost_one_send_the_kept_encoding(redis_url: str) -> None:
    rl = _limiter(redis_url)
    try:
        applied = rl._applied("k", None)
        usual = applied.usual_args
        assert rl._args(applied, 1) is usual  # cost 1: the same tuple each time
        assert rl._args(applied, 2) is not rl._args(applied, 2)  # other costs: fresh ones
        first = await rl.aacquire("k")
        heavier = await rl.aacquire("k", cost=5)
        again = await rl.aacquire("k")
        parts = rl.backend._commands._parts[id(usual)]
        assert parts[0] is usual and parts[2] is not None  # encoded once, kept
        assert (first.remaining, heavier.remaining, again.remaining) == (999, 994, 993)
        assert (await rl.aacquire("other")).remaining == 999
        assert rl.acquire("k").remaining == 992  # sync decisions send it too
    finally:
        await rl.backend.aclose()
