"""The shared backend: Redis standalone, Sentinel or Cluster, one round trip per decision.

Each operation is a Lua script from ``backends/lua/``, run with EVALSHA (reloaded with EVAL on
NOSCRIPT, as after a restart, a failover or ``SCRIPT FLUSH``). One object serves sync callers
(``run``) and asyncio callers (``arun``). On a standalone Redis, sync decisions use one
connection per thread and asyncio decisions one pipelined connection per event loop
(``_redis_lane``), so 50 concurrent tasks cost one round trip instead of 50 while each decision
stays its own atomic script; with TLS, Sentinel or Cluster, redis-py's clients carry them
(concurrent asyncio decisions then share a redis-py pipeline, except on Cluster).

A small health breaker sits in front of Redis: after ``failure_threshold`` consecutive failures it
stops calling Redis for ``cooldown`` seconds and fails immediately with
:class:`~fintech_resilience.BackendUnavailable` (patterns then apply ``on_backend_error``), then
lets one probe through. A dead Redis therefore costs at most one ``timeout`` per cooldown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

import redis
import redis.exceptions as rex

from ..core.per_loop import PerLoop
from ..errors import BackendUnavailable, ConfigurationError
from ._redis_clients import ClientFactory, factory_from_client, factory_from_url
from ._redis_lane import Lane, evalsha_one, settings_of
from .base import Arg, Backend, ConstantArgs

__all__ = ["HealthBreaker", "RedisBackend"]

logger = logging.getLogger("fintech_resilience")

_SCRIPTS: dict[str, tuple[str, bytes]] = {}
_SCRIPTS_LOCK = threading.Lock()
#: bumped in a forked child: connections made before the fork belong to the parent
_FORKS = [0]
os.register_at_fork(after_in_child=lambda: _FORKS.__setitem__(0, _FORKS[0] + 1))


def script(name: str) -> tuple[str, bytes]:
    """The SHA1 and source of ``backends/lua/<name>.lua`` (loaded once per process; shared
    fragments such as ``_now.lua`` are pulled in by ``--#include`` lines)."""
    try:
        return _SCRIPTS[name]
    except KeyError:
        pass
    with _SCRIPTS_LOCK:
        try:
            source = _read_lua(f"{name}.lua")
        except FileNotFoundError:
            raise ConfigurationError(f"unknown backend operation {name!r}") from None
        _SCRIPTS[name] = (hashlib.sha1(source, usedforsecurity=False).hexdigest(), source)
    return _SCRIPTS[name]


_INCLUDE = re.compile(rb"^--#include (\S+)$", re.MULTILINE)


def _read_lua(filename: str) -> bytes:
    """A script from ``backends/lua/``, with ``--#include <file>`` lines replaced by that file."""
    source = resources.files(__package__).joinpath("lua", filename).read_bytes()
    return _INCLUDE.sub(lambda m: _read_lua(m.group(1).decode()).rstrip(b"\n"), source)


class HealthBreaker:
    """Stops calling a failing Redis for a cool-down; then lets a single probe through."""

    __slots__ = ("_failures", "_lock", "_open_until", "_probe_until", "clock", "cooldown",
                 "probe_timeout", "threshold")

    def __init__(self, threshold: int, cooldown: float, probe_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.probe_timeout = probe_timeout
        self.clock = clock
        self._failures = 0
        self._open_until = 0.0
        self._probe_until = 0.0
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._failures >= self.threshold

    def before_call(self) -> None:
        """Raise BackendUnavailable while cooling down or while another call probes."""
        if self._failures < self.threshold:
            return
        now = self.clock()
        with self._lock:
            if now < self._open_until:
                raise BackendUnavailable(
                    f"Redis failed {self._failures} times in a row; cooling down for"
                    f" {self._open_until - now:.2f}s"
                )
            if now < self._probe_until:
                raise BackendUnavailable("Redis is being probed after a failure; not calling it")
            self._probe_until = now + self.probe_timeout

    def success(self) -> None:
        if self._failures:
            with self._lock:
                self._failures = 0
                self._probe_until = 0.0

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.threshold:
                self._open_until = self.clock() + self.cooldown
                self._probe_until = 0.0


def _unavailable(exc: BaseException) -> BackendUnavailable:
    return BackendUnavailable(f"Redis: {type(exc).__name__}: {exc}")


class _ThreadConnections(threading.local):
    """One connection per thread for sync decisions on a standalone Redis.

    A decision is one command and one reply on a connection nobody else uses, so it skips the
    pool's checkout (its lock and bookkeeping cost about a quarter of a round trip). Like the
    pool, it polls the socket first and reconnects if the server closed it (idle timeout,
    restart) or it holds stray data. Any error other than a script's own error reply drops the
    connection (its stream may hold a late reply); a forked child never uses its parent's. A
    thread's connection closes when the thread ends.
    """

    conn: Any = None
    fork = -1


def _packer(pool: Any) -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis' C packer where it encodes exactly as the pool's connections would (UTF-8)."""
    try:
        import hiredis
    except ImportError:
        return None
    encoding = str(pool.connection_kwargs.get("encoding", "utf-8")).lower().replace("_", "-")
    errors = pool.connection_kwargs.get("encoding_errors", "strict")
    if encoding not in ("utf-8", "utf8") or errors != "strict":
        return None
    pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command
    return pack


def _direct_pool(client: Any) -> Any:
    """The pool whose connection settings a per-thread connection copies, or None when the
    client needs its pool's logic (Sentinel follows the primary through it; Cluster routes)."""
    pool = getattr(client, "connection_pool", None)
    if type(client) is not redis.Redis or type(pool) not in (redis.ConnectionPool,
                                                            redis.BlockingConnectionPool):
        return None
    if getattr(pool, "cache", None) is not None:  # client-side caching rides on the pool
        return None
    return pool


class _Batch:
    """Per event loop: the asyncio client, and the lane or pipeline concurrent decisions share."""

    __slots__ = ("client", "in_flight", "keeper", "lane", "lane_settings", "lock", "opening",
                 "pending", "ready", "scheduled")

    def __init__(self, client: Any, ready: bool, max_in_flight: int, lanes: bool) -> None:
        self.client = client
        # standalone: decisions go through one pipelined connection of our own (see _redis_lane)
        self.lane_settings = settings_of(client) if lanes else None
        self.lane: Lane | None = None
        self.opening: asyncio.Future[Lane] | None = None
        self.pending: list[tuple[str, Sequence[str], Sequence[Arg], asyncio.Future[Any]]] = []
        self.scheduled = False
        # redis-py's asyncio cluster client must discover the slots once before concurrent use,
        # or concurrent first calls race its initialisation and fail
        self.ready = ready
        self.lock = asyncio.Lock()
        # calls that cannot share a pipeline (Cluster) queue here instead of exhausting the
        # client's connection pool
        self.in_flight = asyncio.Semaphore(max_in_flight)
        self.keeper: asyncio.Task[None] | None = None


class RedisBackend(Backend):
    """State shared by every worker and host through Redis.

    :param client: an existing ``redis.Redis`` / ``redis.cluster.RedisCluster`` (or an asyncio
        twin). Prefer :meth:`from_url`, which sets safe timeouts and disables redis-py's retries.
    :param async_client: the asyncio client, where it cannot be derived from ``client``.
    :param failure_threshold: consecutive failures that open the health breaker.
    :param cooldown: seconds the health breaker stays open before one probe.
    :param pipeline: share one round trip between concurrent asyncio decisions (default True:
        one pipelined connection per event loop on a standalone Redis, a redis-py pipeline on
        Sentinel; on Cluster each decision is its own EVALSHA). False: one redis-py call each.
    :param max_in_flight: asyncio calls that are not pipelined wait beyond this many in flight
        per event loop (keeps redis-py's connection pool from overflowing).
    """

    kind = "redis"

    def __init__(self, client: Any = None, *, async_client: Any = None, failure_threshold: int = 3,
                 cooldown: float = 1.0, probe_timeout: float = 1.0, pipeline: bool = True,
                 max_in_flight: int = 64, _factory: ClientFactory | None = None) -> None:
        if _factory is None:
            if client is None and async_client is None:
                raise ConfigurationError(
                    "RedisBackend needs a client; use RedisBackend.from_url('redis://host:6379/0')"
                )
            _factory = factory_from_client(client, async_client)
        if failure_threshold < 1 or cooldown < 0 or max_in_flight < 1:
            raise ConfigurationError(
                "failure_threshold and max_in_flight must be >= 1 and cooldown >= 0"
            )
        self._factory = _factory
        self.topology = _factory.topology
        self.health = HealthBreaker(failure_threshold, cooldown, probe_timeout)
        self.pipeline = pipeline
        self.max_in_flight = max_in_flight
        self._sync: Any = None
        self._sync_lock = threading.Lock()
        self._direct: Any = ...  # the pool to copy per-thread connections from (None: no)
        self._pack: Callable[[tuple[Any, ...]], bytes] | None = None
        self._threads = _ThreadConnections()
        self._opened: weakref.WeakSet[Any] = weakref.WeakSet()
        self._batches: PerLoop[_Batch] = PerLoop()

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.05, connect_timeout: float | None = None,
                 failure_threshold: int = 3, cooldown: float = 1.0, pipeline: bool = True,
                 **client_options: Any) -> RedisBackend:
        """Connect to ``redis://``, ``rediss://``, ``unix://``, ``redis+sentinel://host:port/
        service/db`` or ``redis+cluster://host:port,host:port``.

        :param timeout: socket timeout of every Redis call, in seconds (default 50 ms).
        :param connect_timeout: connect timeout, in seconds (default: ``timeout``).
        """
        if timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds; got {timeout!r}")
        factory = factory_from_url(url, timeout, connect_timeout or timeout, **client_options)
        return cls(failure_threshold=failure_threshold, cooldown=cooldown,
                   probe_timeout=max(timeout * 4, 0.2), pipeline=pipeline, _factory=factory)

    # -- clients ---------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The sync redis-py client (created on first use)."""
        if self._sync is None:
            if self._factory.sync is None:
                raise ConfigurationError("this RedisBackend has no sync client; pass client=...")
            with self._sync_lock:
                if self._sync is None:
                    self._sync = self._factory.sync()
        return self._sync

    def _batch(self) -> _Batch:
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is None:
            if self._factory.asyncio is None:
                raise ConfigurationError(
                    "this RedisBackend has no asyncio client; pass async_client=..."
                )
            batch = _Batch(self._factory.asyncio(), ready=self.topology != "cluster",
                           max_in_flight=self.max_in_flight,
                           lanes=self.pipeline and self.topology == "standalone")
            self._batches.set(loop, batch)
            batch.keeper = loop.create_task(self._keep(weakref.ref(loop), batch))
        return batch

    async def _ready_batch(self) -> _Batch:
        batch = self._batch()
        if not batch.ready:
            async with batch.lock:
                if not batch.ready:
                    try:
                        await batch.client.initialize()
                    except (rex.RedisError, OSError) as exc:
                        self.health.failure()
                        raise _unavailable(exc) from exc
                    batch.ready = True
        return batch

    def async_client(self) -> Any:
        """The asyncio redis-py client of the running event loop."""
        return self._batch().client

    # -- operations ------------------------------------------------------------------------------
    def _connection(self) -> Any:
        """This thread's own connection, or None to go through the client's pool."""
        pool = self._direct
        if pool is ...:
            pool = self._direct = _direct_pool(self.client)
            self._pack = _packer(pool) if pool is not None else None
        if pool is None:
            return None
        local = self._threads
        conn = local.conn
        if conn is None or local.fork != _FORKS[0]:
            conn = local.conn = pool.connection_class(**pool.connection_kwargs)
            local.fork = _FORKS[0]
            self._opened.add(conn)
            return conn
        try:  # as the pool checks: closed by the server (idle timeout, restart) or out of step
            stale = conn.can_read()
        except (rex.ConnectionError, rex.TimeoutError, OSError):
            stale = True
        if stale:
            conn.disconnect()  # the command below connects afresh
        return conn

    def _call(self, conn: Any, *command: Any) -> Any:
        pack = self._pack
        try:
            conn.send_packed_command([pack(command)] if pack is not None
                                     else conn.pack_command(*command), False)
            return conn.read_response()
        except rex.ResponseError:
            raise  # a whole error reply was read: the connection is still in step
        except BaseException:
            self._threads.conn = None
            conn.disconnect()
            raise

    def run(self, script_name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        sha, source = script(script_name)
        self.health.before_call()
        conn = self._connection()
        send = (self.client.execute_command if conn is None
                else functools.partial(self._call, conn))
        try:
            try:
                result = send("EVALSHA", sha, len(keys), *keys, *args)
            except rex.NoScriptError:
                result = send("EVAL", source, len(keys), *keys, *args)
        except (rex.RedisError, OSError) as exc:  # OSError: socket errors redis-py did not wrap
            self.health.failure()
            raise _unavailable(exc) from exc
        self.health.success()
        return result

    async def arun(self, script_name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        sha, source = script(script_name)  # unknown names fail here, before anything is queued
        self.health.before_call()
        batch = self._batch()
        if batch.lane_settings is not None:  # standalone: the loop's lane (one coroutine less)
            lane = batch.lane
            try:
                if lane is None or lane.closed:
                    lane = await self._open_lane(batch)
                reply = await lane.call(
                    evalsha_one(sha, keys[0], args)
                    if type(args) is ConstantArgs and len(keys) == 1
                    else ("EVALSHA", sha, len(keys), *keys, *args))
                if isinstance(reply, Exception):  # an error reply
                    if str(reply).startswith("NOSCRIPT"):
                        reply = await lane.call(("EVAL", source, len(keys), *keys, *args))
                    if isinstance(reply, Exception):
                        raise rex.ResponseError(str(reply))
            except (rex.RedisError, OSError) as exc:  # OSError: TimeoutError, socket errors
                self.health.failure()
                raise _unavailable(exc) from exc
            self.health.success()
            return reply
        if not batch.ready:
            batch = await self._ready_batch()
        if not self.pipeline or self.topology == "cluster":
            # redis-py's cluster pipeline refuses EVALSHA: concurrent calls use the per-node
            # connection pools instead
            async with batch.in_flight:
                return await self._run_one(batch.client, script_name, keys, args)
        if not batch.scheduled:
            # no batch is forming: this decision leads. Decisions issued in the same loop
            # iteration queue behind it; if none did, it is sent at once (no task, no future)
            batch.scheduled = True
            try:
                await asyncio.sleep(0)
            except BaseException:
                if batch.pending:
                    asyncio.get_running_loop().create_task(self._flush(batch))
                else:
                    batch.scheduled = False
                raise
            if not batch.pending:
                batch.scheduled = False
                return await self._run_one(batch.client, script_name, keys, args)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            batch.pending.append((script_name, keys, args, future))
            asyncio.get_running_loop().create_task(self._flush(batch))
            return await future
        future = asyncio.get_running_loop().create_future()
        batch.pending.append((script_name, keys, args, future))
        return await future

    async def _keep(self, loop: weakref.ref[asyncio.AbstractEventLoop], batch: _Batch) -> None:
        """Wait for the loop's shutdown (``asyncio.run`` and its kin cancel the pending tasks),
        then close what this backend opened for the loop and forget it: a process that runs many
        loops (a worker calling ``asyncio.run`` per job) keeps no connection and no loop of the
        finished ones. A client the caller passed in is the caller's to close."""
        try:
            await asyncio.get_running_loop().create_future()  # completes never
        except asyncio.CancelledError:
            running = loop()
            if running is not None and self._batches.get(running) is batch:  # not aclose()d
                with contextlib.suppress(Exception):
                    await self._drop(running, close_client=self._factory.owns_async)
            raise

    async def _drop(self, loop: asyncio.AbstractEventLoop, *, close_client: bool) -> None:
        """Forget ``loop``'s batch; close its lane and (if asked) its asyncio client."""
        batch = self._batches.pop(loop)
        if batch is None:
            return
        if batch.lane is not None:
            batch.lane.close()
        if close_client:
            await batch.client.aclose()

    async def _open_lane(self, batch: _Batch) -> Lane:
        # concurrent first calls wait for one connection together (and then share its first
        # write); a caller that gives up does not cancel the connection the others wait for
        opening = batch.opening
        if opening is None:
            assert batch.lane_settings is not None
            opening = batch.opening = asyncio.ensure_future(Lane.open(batch.lane_settings))

            def opened(done: asyncio.Future[Lane]) -> None:
                batch.opening = None
                if not done.cancelled() and done.exception() is None:
                    batch.lane = done.result()

            opening.add_done_callback(opened)
        return await asyncio.shield(opening)

    async def _run_one(self, client: Any, script_name: str, keys: Sequence[str],
                       args: Sequence[Arg]) -> Any:
        sha, source = script(script_name)
        try:
            try:
                result = await client.evalsha(sha, len(keys), *keys, *args)
            except rex.NoScriptError:
                result = await client.eval(source, len(keys), *keys, *args)
        except (rex.RedisError, OSError) as exc:
            self.health.failure()
            raise _unavailable(exc) from exc
        self.health.success()
        return result

    async def _flush(self, batch: _Batch) -> None:
        pending, batch.pending, batch.scheduled = batch.pending, [], False
        if len(pending) == 1:
            name, keys, args, future = pending[0]
            try:
                result = await self._run_one(batch.client, name, keys, args)
            except BaseException as exc:  # delivered to the waiting caller
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)
            return
        try:
            pipe = batch.client.pipeline(transaction=False)
            for name, keys, args, _ in pending:
                pipe.evalsha(script(name)[0], len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        except (rex.RedisError, OSError) as exc:
            self.health.failure()
            error = _unavailable(exc)
            error.__cause__ = exc
            for *_, future in pending:
                if not future.done():
                    future.set_exception(error)
            return
        except BaseException as exc:
            for *_, future in pending:
                if not future.done():
                    future.set_exception(exc)
            raise
        self.health.success()
        for (name, keys, args, future), result in zip(pending, results, strict=True):
            if isinstance(result, rex.NoScriptError):
                try:
                    result = await self._run_one(batch.client, name, keys, args)
                except BackendUnavailable as exc:
                    result = exc
            elif isinstance(result, rex.RedisError):
                error = _unavailable(result)
                error.__cause__ = result
                result = error
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    # -- checks ----------------------------------------------------------------------------------
    def eviction_policies(self) -> list[str]:
        """``maxmemory-policy`` of the server (of every primary on a Cluster).

        Raises :class:`~fintech_resilience.BackendUnavailable` when it cannot be read (down, or
        ``CONFIG`` disabled as on some managed services).
        """
        client = self.client
        nodes = (
            [n.redis_connection for n in client.get_primaries()]
            if self.topology == "cluster" else [client]
        )
        try:
            return [
                str(node.config_get("maxmemory-policy").get("maxmemory-policy", "unknown"))
                for node in nodes
            ]
        except (rex.RedisError, OSError, AttributeError) as exc:
            raise _unavailable(exc) from exc

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
        for conn in list(self._opened):
            conn.disconnect()
        self._opened.clear()
        self._threads = _ThreadConnections()
        self._direct = ...
        if self._sync is not None:
            self._sync.close()
            self._sync = None

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        batch = self._batches.get(loop)
        if batch is not None and batch.keeper is not None:
            batch.keeper.cancel()  # the loop goes on: its keeper has nothing left to do
        await self._drop(loop, close_client=True)
        self.close()

    def __repr__(self) -> str:
        return f"RedisBackend(topology={self.topology!r})"
