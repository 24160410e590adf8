"""RedisBackend: settings, topology, transports and health put together.

A decision names a script; the topology names the node that serves its key; the transport
sends one ``EVALSHA`` there - on this thread's connection to that node (sync) or on the event
loop's pipelined connection to it (asyncio) - and the node's health breaker hears how it went.
Error replies that redirect (``NOSCRIPT`` -> ``EVAL``, ``MOVED``, ``ASK``) are followed by one
piece of logic, :meth:`RedisBackend._recover`, driven by a sync and an async loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any

import redis.exceptions as rex

from ...core.per_loop import PerLoop
from ...errors import BackendUnavailable, ConfigurationError
from ..base import Arg, Backend
from ._clients import ClientFactory, client_timeouts, factory_from_client, factory_from_url
from ._health import HealthBreaker, Refused, is_refusal
from ._lane import Lane
from ._loops import LoopState, suppress_errors, when_closed
from ._resp import Commands, error_code
from ._scripts import script
from ._settings import Settings, read_timeout
from ._threads import ThreadConnections, read_reply
from ._topology import ClusterTopology, Node, SentinelTopology, Standalone, Topology

__all__ = ["RedisBackend"]

logger = logging.getLogger("fintech_resilience")

_TOPOLOGIES: dict[str, Callable[[Callable[[], Any], Settings], Topology]] = {
    "standalone": Standalone, "sentinel": SentinelTopology, "cluster": ClusterTopology}
#: redirections followed for one decision (MOVED, ASK, NOSCRIPT) before it fails
_REDIRECTS = 5
#: error replies after which the topology is read again (a failover, a demoted primary)
_STALE = ("READONLY", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "LOADING")

Steps = Generator[tuple[Node, list[bytes]], list[Any], Any]


#: how late Redis may end a blocked command's timeout (one tick of its default ``hz 10``)
_WAIT_SLACK = 0.1


class RedisBackend(Backend):
    """State shared by every worker and host through Redis: standalone, Sentinel or Cluster.

    :param client: an existing ``redis.Redis`` / ``redis.cluster.RedisCluster`` (or an asyncio
        twin): where Redis is and how to connect. Prefer :meth:`from_url`.
    :param async_client: the asyncio client, returned by :meth:`async_client`.
    :param timeout: seconds to wait for a reply (default: the client's ``socket_timeout`` -
        redis-py's own default is 5 s, so set it here - else 50 ms).
    :param connect_timeout: seconds a new connection may take, TLS handshake included
        (default: the client's ``socket_connect_timeout``, else 1 s).
    :param failure_threshold: consecutive failures of one node that open its health breaker.
    :param cooldown: seconds a node's health breaker stays open before one probe.
    :param probe_timeout: seconds one probe may take before another caller probes.
    """

    kind = "redis"
    replicated = True

    def __init__(self, client: Any = None, *, async_client: Any = None,
                 timeout: float | None = None, connect_timeout: float | None = None,
                 failure_threshold: int = 3, cooldown: float = 1.0,
                 probe_timeout: float | None = None, _factory: ClientFactory | None = None
                 ) -> None:
        if _factory is None:
            if client is None and async_client is None:
                raise ConfigurationError(
                    "RedisBackend needs a client; use RedisBackend.from_url('redis://host:6379/0')"
                )
            _factory = factory_from_client(client, async_client)
            theirs = client_timeouts(client if client is not None else async_client)
            timeout = timeout if timeout is not None else theirs[0]
            connect_timeout = connect_timeout if connect_timeout is not None else theirs[1]
        self.settings = Settings(
            timeout=0.05 if timeout is None else timeout,
            connect_timeout=1.0 if connect_timeout is None else connect_timeout,
            failure_threshold=failure_threshold, cooldown=cooldown,
            probe_timeout=-1.0 if probe_timeout is None else probe_timeout)
        self._factory = _factory
        #: ``"standalone"``, ``"sentinel"`` or ``"cluster"``
        self.topology = _factory.topology
        self._sync: Any = None
        self._lock = threading.Lock()
        self._resolving = threading.Lock()
        self._topology = _TOPOLOGIES[self.topology](lambda: self.client, self.settings)
        self._discovery = HealthBreaker(failure_threshold, cooldown, self.settings.probe_timeout,
                                        name=f"Redis {self.topology} discovery")
        self._threads = ThreadConnections(cooldown)
        self._loops: PerLoop[LoopState] = PerLoop()
        self._commands = Commands()

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.05, connect_timeout: float | None = None,
                 failure_threshold: int = 3, cooldown: float = 1.0,
                 probe_timeout: float | None = None, **client_options: Any) -> RedisBackend:
        """Connect to ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://host:port/
        service/db`` or ``redis+cluster://host:port,host:port``.

        :param timeout: seconds to wait for a reply, per call (default 50 ms).
        :param connect_timeout: seconds a new connection may take - TCP connect, TLS handshake
            and setup - before it counts as failed (default 1 s).
        :param client_options: passed to redis-py's clients (``ssl_ca_certs=``,
            ``ssl_certfile=``, ``client_name=``, ...).
        """
        settings = Settings(timeout=timeout,
                            connect_timeout=1.0 if connect_timeout is None else connect_timeout,
                            failure_threshold=failure_threshold, cooldown=cooldown)
        factory = factory_from_url(url, settings, **client_options)
        return cls(timeout=settings.timeout, connect_timeout=settings.connect_timeout,
                   failure_threshold=failure_threshold, cooldown=cooldown,
                   probe_timeout=probe_timeout, _factory=factory)

    # -- clients and topology ------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The sync redis-py client (made on first use), for commands other than decisions."""
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    self._sync = self._factory.sync()
        return self._sync

    def async_client(self) -> Any:
        """The asyncio redis-py client of the running event loop, for other commands."""
        if self._factory.asyncio is None:
            raise ConfigurationError(
                "this RedisBackend has no asyncio client; pass async_client=...")
        state = self._loop_state(asyncio.get_running_loop())
        if state.client is None:
            state.client = self._factory.asyncio()
        return state.client

    def health_for(self, key: str) -> HealthBreaker:
        """The health breaker of the node serving ``key``."""
        return self._node(key).health

    @property
    def health(self) -> HealthBreaker:
        """The health breaker of the standalone or Sentinel primary (on a Cluster, each node
        has its own: :meth:`health_for`)."""
        if self.topology == "cluster":
            raise ConfigurationError("a Cluster has a health breaker per node: use health_for(key)")
        return self._node("").health

    def healthy(self) -> bool:
        """No primary's last call failed (and the topology is known)."""
        topology = self._topology
        return topology.ready and not any(n.health.failing for n in topology.primaries())

    def _resolve(self) -> None:
        """Learn the topology (first use); raise BackendUnavailable when Redis cannot tell."""
        with self._resolving:
            if self._topology.ready:
                return
            self._discovery.before_call()
            try:
                self._topology.resolve()
            except (rex.RedisError, rex.RedisClusterException, OSError) as exc:
                self._discovery.failure()
                raise BackendUnavailable(
                    f"Redis {self.topology}: cannot learn the topology: {exc}") from exc
            self._discovery.success()

    def _node(self, key: str) -> Node:
        if not self._topology.ready:
            self._resolve()
        return self._topology.node_for(key)

    def _checked(self, node: Node) -> Node:
        try:
            node.health.before_call()
        except BackendUnavailable:
            self._topology.refresh_soon()  # a failover may have replaced it meanwhile
            raise
        return node

    def _failed(self, node: Node, exc: BaseException) -> BackendUnavailable:
        """The error a failed call raises. A failure of the node counts once - a lane that
        times out fails all its waiting calls with one error, one failed round trip - and a
        full server's refusal does not count."""
        if is_refusal(exc):
            return BackendUnavailable(f"Redis {node.address} refused the connection: {exc}")
        if not getattr(exc, "_counted", False):
            exc._counted = True  # type: ignore[attr-defined]
            node.health.failure()
            self._topology.refresh_soon()
        return BackendUnavailable(f"Redis {node.address}: {type(exc).__name__}: {exc}")

    # -- sync decisions ------------------------------------------------------------------------
    def run(self, script_name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        sha, source = script(script_name)
        node = self._checked(self._node(keys[0] if keys else ""))
        try:
            reply = self._threads.call(node, self._commands.evalsha(sha, keys, args))
        except (rex.RedisError, OSError) as exc:  # OSError: socket errors redis-py did not wrap
            raise self._failed(node, exc) from exc
        if isinstance(reply, Exception):
            steps = self._recover(node, reply, sha, source, keys, args)
            replies: list[Any] | None = None
            while True:
                try:
                    node, packed = steps.send(replies)  # type: ignore[arg-type]
                except StopIteration as done:
                    return done.value
                replies = self._send(node, packed)
        node.health.success()
        return reply

    def _send(self, node: Node, packed: list[bytes]) -> list[Any]:
        try:
            if len(packed) == 1:
                return [self._threads.call(node, packed[0])]
            replies: list[Any] = self._threads.call(node, b"".join(packed), len(packed))
            return replies
        except (rex.RedisError, OSError) as exc:
            raise self._failed(node, exc) from exc

    # -- asyncio decisions ---------------------------------------------------------------------
    async def arun(self, script_name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        sha, source = script(script_name)  # unknown names fail here, before anything is queued
        topology = self._topology
        if not topology.ready:
            await asyncio.to_thread(self._resolve)
        node = self._checked(topology.node_for(keys[0] if keys else ""))
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop) or self._loop_state(loop)
        lane = state.lanes.get(node.address)
        try:
            if lane is None or lane.closed:
                lane = await self._open_lane(state, node)
            reply = await lane.call(self._commands.evalsha(sha, keys, args))
        except (rex.RedisError, OSError) as exc:  # OSError: TimeoutError, socket errors
            raise self._failed(node, exc) from exc
        if isinstance(reply, Exception):
            steps = self._recover(node, reply, sha, source, keys, args)
            replies: list[Any] | None = None
            while True:
                try:
                    node, packed = steps.send(replies)  # type: ignore[arg-type]
                except StopIteration as done:
                    return done.value
                replies = await self._asend(state, node, packed)
        node.health.success()
        return reply

    async def _asend(self, state: LoopState, node: Node, packed: list[bytes]) -> list[Any]:
        try:
            lane = state.lanes.get(node.address)
            if lane is None or lane.closed:
                lane = await self._open_lane(state, node)
            futures = [lane.call(command) for command in packed]  # one write, one round trip
            return [await future for future in futures]
        except (rex.RedisError, OSError) as exc:
            raise self._failed(node, exc) from exc

    async def _open_lane(self, state: LoopState, node: Node) -> Lane:
        """The loop's connection to ``node``: concurrent first calls wait for one connection
        together; a caller that gives up does not cancel it for the others."""
        address = node.address
        if time.monotonic() < state.refused_until.get(address, 0.0):
            raise Refused(f"Redis {address} refused a connection (max number of clients"
                          " reached); asking again later")
        opening = state.opening.get(address)
        if opening is None:
            opening = asyncio.ensure_future(Lane.open(node.lane_settings()))
            state.opening[address] = opening
            cooldown = self.settings.cooldown

            def opened(done: asyncio.Future[Lane]) -> None:
                state.opening.pop(address, None)
                if done.cancelled():
                    return
                error = done.exception()
                if error is None:
                    state.lanes[address] = done.result()
                elif is_refusal(error):
                    state.refused_until[address] = time.monotonic() + cooldown

            opening.add_done_callback(opened)
        return await asyncio.shield(opening)

    def _loop_state(self, loop: asyncio.AbstractEventLoop) -> LoopState:
        state = self._loops.get(loop)
        if state is None:
            state = LoopState()
            self._loops.set(loop, state)
            when_closed(loop, functools.partial(_release, weakref.ref(self)))
        return state

    # -- what an error reply means, for both drivers --------------------------------------------
    def _recover(self, node: Node, reply: Exception, sha: str, source: bytes,
                 keys: Sequence[str], args: Sequence[Arg]) -> Steps:
        """Yield ``(node, commands)`` to send after an error reply, receive their replies, and
        return the decision's reply: ``NOSCRIPT`` reloads the script with ``EVAL`` (the cache is
        empty after a restart or failover), ``MOVED`` re-routes the slot, ``ASK`` asks the
        importing node once. Other error replies fail the call (the node counts a failure)."""
        asking = False
        for _ in range(_REDIRECTS):
            code, detail = error_code(reply)
            command: tuple[Any, ...] = ("EVALSHA", sha, len(keys), *keys, *args)
            if code == "NOSCRIPT":
                command = ("EVAL", source, len(keys), *keys, *args)
            elif code == "MOVED":
                node, asking = self._checked(self._topology.moved(detail)), False
            elif code == "ASK":
                node, asking = self._checked(self._topology.asked(detail)), True
            else:
                break
            packed = [self._commands.pack(command)]
            if asking:
                packed.insert(0, self._commands.pack(("ASKING",)))
            reply = (yield node, packed)[-1]
            if not isinstance(reply, Exception):
                node.health.success()
                return reply
        if error_code(reply)[0] in _STALE:
            self._topology.refresh_soon()
        node.health.failure()
        raise BackendUnavailable(f"Redis {node.address}: {reply}")

    # -- checks ----------------------------------------------------------------------------------
    def run_replicated(self, script_name: str, keys: Sequence[str], args: Sequence[Arg],
                       replicas: int, timeout: float) -> tuple[Any, int]:
        """The script then ``WAIT replicas timeout`` in one pipeline: one round trip, on one
        connection (``WAIT`` counts the acknowledgements of that connection's writes), on the
        node that owns ``keys[0]``."""
        reply, acked, _ = self._replicated(script_name, keys, args, replicas, timeout)
        return reply, acked

    def run_durably(self, script_name: str, keys: Sequence[str], args: Sequence[Arg],
                    timeout: float) -> tuple[Any, int, int]:
        """:meth:`run_replicated` for every replica the node owning ``keys[0]`` has now (asked
        with ``ROLE`` first, on the same connection: one more round trip)."""
        return self._replicated(script_name, keys, args, None, timeout)

    def _replicated(self, script_name: str, keys: Sequence[str], args: Sequence[Arg],
                    replicas: int | None, timeout: float) -> tuple[Any, int, int]:
        sha, source = script(script_name)
        health = self.health_for(keys[0])
        health.before_call()
        client = self.client
        if self.topology == "cluster":
            client = client.get_node_from_key(keys[0]).redis_connection
        wait_ms = max(1, round(timeout * 1000))
        pool = client.connection_pool
        try:
            conn = pool.get_connection()
            try:
                conn.connect()  # a pooled connection may not be connected yet
                if replicas is None:
                    conn.send_packed_command(conn.pack_command("ROLE"))
                    role = read_reply(conn)
                    replicas = (len(role[2]) if isinstance(role, list)
                                and role[0] in (b"master", "master") else 0)
                # WAIT answers after its own timeout, which Redis ends on its next timer tick
                # (up to 1/hz = 100 ms late by default): the replies may take that much longer
                # than a command, and a slow replica is no failing primary
                read_timeout(conn, self.settings.timeout + wait_ms / 1000 + _WAIT_SLACK)
                for command in (("EVALSHA", sha), ("EVAL", source)):
                    conn.send_packed_command(conn.pack_commands(
                        [(*command, len(keys), *keys, *args), ("WAIT", replicas, wait_ms)]))
                    raw, acked = read_reply(conn), read_reply(conn)
                    if not isinstance(raw, rex.NoScriptError):
                        break
                read_timeout(conn, conn.socket_timeout)
            except BaseException:
                conn.disconnect()
                raise
            finally:
                pool.release(conn)
            for reply in (raw, acked):
                if isinstance(reply, BaseException):
                    raise reply
        except (rex.RedisError, OSError) as exc:
            health.failure()
            raise BackendUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc
        health.success()
        return raw, int(acked), replicas

    def eviction_policies(self) -> list[str]:
        """``maxmemory-policy`` of the server (of every primary on a Cluster).

        Raises :class:`~fintech_resilience.BackendUnavailable` when it cannot be read (down, or
        ``CONFIG`` disabled as on some managed services).
        """
        try:
            client = self.client
            nodes = (
                [n.redis_connection for n in client.get_primaries()]
                if self.topology == "cluster" else [client]
            )
            return [
                str(node.config_get("maxmemory-policy").get("maxmemory-policy", "unknown"))
                for node in nodes
            ]
        except (rex.RedisError, rex.RedisClusterException, OSError, AttributeError) as exc:
            raise BackendUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc

    def warn_if_evicting(self, what: str) -> bool:
        """Log a warning (and return True) when Redis may evict keys that hold ``what``.

        Every policy but ``noeviction`` can evict keys with a TTL, and every key here has one: an
        evicted idempotency record means a retried charge executes twice.
        """
        try:
            policies = self.eviction_policies()
        except BackendUnavailable:
            return False
        risky = sorted({p for p in policies if p != "noeviction"})
        if risky:
            logger.warning(
                "Redis maxmemory-policy is %s: under memory pressure it can evict %s; set"
                " maxmemory-policy noeviction on the Redis that holds them", ", ".join(risky), what,
            )
        return bool(risky)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close every thread's connections and the sync client."""
        self._threads.close()
        if self._sync is not None:
            self._sync.close()

    async def aclose(self) -> None:
        """Close this event loop's connections, then as :meth:`close`."""
        await self._release(asyncio.get_running_loop())
        self.close()

    async def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """Forget ``loop``'s state; close its lanes and the asyncio client made for it."""
        state = self._loops.pop(loop)
        if state is None:
            return
        state.close_lanes()
        for opening in list(state.opening.values()):
            opening.cancel()
        if state.client is not None and self._factory.owns_async:
            await suppress_errors(state.client.aclose())

    def __repr__(self) -> str:
        return f"RedisBackend(topology={self.topology!r})"


async def _release(ref: weakref.ref[RedisBackend], loop: asyncio.AbstractEventLoop) -> None:
    """At the loop's close: what the backend (if it still exists) opened for the loop."""
    backend = ref()
    if backend is not None:
        await backend._release(loop)
