"""Topology: which node serves a key, and learning when that changes.

* :class:`Standalone` - one node, fixed.
* :class:`SentinelTopology` - the primary named by redis-py's ``Sentinel.discover_master``;
  asked again after a failure (failover, ``READONLY``, a lost connection).
* :class:`ClusterTopology` - the slot map of redis-py's ``RedisCluster`` (node discovery and
  ``CLUSTER SLOTS``), one entry per slot, keys routed by redis-py's ``key_slot``; ``MOVED``
  re-routes its slot at once, and the map is read again after a failure.

Re-reading never blocks a decision: it runs on a background thread, at most one at a time and
not more often than every ``REFRESH_INTERVAL`` seconds, and callers keep the map they have
until the new one is in. Nodes are kept by address, each with its own health breaker, so a
node keeps its health across refreshes and a promoted replica starts healthy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from ...errors import BackendUnavailable
from ._health import HealthBreaker
from ._settings import ConnectionSettings, LaneSettings, Settings

__all__ = ["ClusterTopology", "Node", "SentinelTopology", "Standalone", "Topology"]

logger = logging.getLogger("fintech_resilience")

#: seconds between two re-reads of the topology, at least
REFRESH_INTERVAL = 0.1
#: keys whose slot a Cluster topology remembers (the same keys come back: users, breakers)
SLOT_CACHE = 10_000


class Node:
    """A primary the backend sends decisions to: its address, how to connect, its health."""

    __slots__ = ("_lane", "address", "connection", "health")

    def __init__(self, connection: ConnectionSettings, settings: Settings) -> None:
        self.connection = connection
        self.address = connection.address
        self.health = HealthBreaker(settings.failure_threshold, settings.cooldown,
                                    settings.probe_timeout, name=f"Redis {self.address}")
        self._lane: LaneSettings | None = None

    def lane_settings(self) -> LaneSettings:
        if self._lane is None:
            self._lane = self.connection.lane()
        return self._lane

    def __repr__(self) -> str:
        return f"Node({self.address})"


class Topology:
    """Which node serves a key (:meth:`node_for`), read from redis-py's client."""

    kind = "standalone"

    def __init__(self, client: Callable[[], Any], settings: Settings) -> None:
        self._client = client
        self.settings = settings
        self.ready = False
        self._nodes: dict[str, Node] = {}
        self._lock = threading.Lock()
        self._refreshing = 0  # the pid of the process whose thread is refreshing, or 0
        self._next_refresh = 0.0

    def node_for(self, key: str) -> Node:
        """The node serving ``key`` (:meth:`resolve` first)."""
        raise NotImplementedError

    def primaries(self) -> list[Node]:
        """Every node serving a part of the keyspace now."""
        raise NotImplementedError

    def resolve(self) -> None:
        """Learn the topology from Redis (blocking; raises redis-py's errors)."""
        raise NotImplementedError

    def node(self, connection: ConnectionSettings) -> Node:
        """The node at ``connection``'s address (one object per address, kept)."""
        node = self._nodes.get(connection.address)
        if node is None:
            with self._lock:
                node = self._nodes.setdefault(connection.address, Node(connection, self.settings))
        return node

    def refresh_soon(self) -> None:
        """Read the topology again on a background thread (unless one is at it or did so a
        moment ago); decisions meanwhile use the map they have."""
        pid = os.getpid()
        if self._refreshing == pid or time.monotonic() < self._next_refresh:
            return
        with self._lock:
            if self._refreshing == pid:
                return
            self._refreshing = pid
        threading.Thread(target=self._refresh, name="fintech-resilience-topology",
                         daemon=True).start()

    def _refresh(self) -> None:
        try:
            self.resolve()
        except Exception as exc:  # the next failure asks again
            logger.debug("Redis %s topology not refreshed: %r", self.kind, exc)
        finally:
            self._next_refresh = time.monotonic() + REFRESH_INTERVAL
            self._refreshing = 0

    def moved(self, detail: str) -> Node:
        """After ``MOVED <slot> <host:port>``: the node to ask now."""
        raise BackendUnavailable(f"Redis answered MOVED {detail} outside a Cluster")

    def asked(self, detail: str) -> Node:
        """After ``ASK <slot> <host:port>``: the node to ask once."""
        raise BackendUnavailable(f"Redis answered ASK {detail} outside a Cluster")


class Standalone(Topology):
    """One server (``redis://``, ``rediss://``, ``unix://``)."""

    def __init__(self, client: Callable[[], Any], settings: Settings) -> None:
        super().__init__(client, settings)
        pool = client().connection_pool
        self._node = self.node(ConnectionSettings.from_pool(
            pool.connection_class, pool.connection_kwargs, settings))
        self.ready = True

    def node_for(self, key: str) -> Node:
        return self._node

    def primaries(self) -> list[Node]:
        return [self._node]

    def resolve(self) -> None:
        pass

    def refresh_soon(self) -> None:
        pass


class SentinelTopology(Topology):
    """The primary of a Sentinel-monitored service."""

    kind = "sentinel"
    _primary: Node

    def node_for(self, key: str) -> Node:
        return self._primary

    def primaries(self) -> list[Node]:
        return [self._primary] if self.ready else []

    def resolve(self) -> None:
        pool = self._client().connection_pool
        host, port = pool.sentinel_manager.discover_master(pool.service_name)
        template = ConnectionSettings.from_pool(pool.connection_class, pool.connection_kwargs,
                                                self.settings)
        primary = self.node(template.at(host, port))
        if self.ready and primary is not self._primary:
            logger.info("Redis Sentinel: the primary of %s is now %s", pool.service_name,
                        primary.address)
        self._primary = primary
        self.ready = True


class ClusterTopology(Topology):
    """A Redis Cluster: the primary of each of the 16384 slots."""

    kind = "cluster"
    _template: ConnectionSettings

    def __init__(self, client: Callable[[], Any], settings: Settings) -> None:
        super().__init__(client, settings)
        self._slots: list[Node | None] = []
        self._primaries: list[Node] = []
        self._slot_of: dict[str, int] = {}

    def node_for(self, key: str) -> Node:
        slot = self._slot_of.get(key)
        if slot is None:
            slot = key_slot(key.encode())
            if len(self._slot_of) >= SLOT_CACHE:
                self._slot_of.clear()
            self._slot_of[key] = slot
        node = self._slots[slot]
        if node is None:
            self.refresh_soon()
            raise BackendUnavailable(f"no Redis Cluster node serves slot {slot}")
        return node

    def primaries(self) -> list[Node]:
        return self._primaries

    def resolve(self) -> None:
        client = self._client()  # made once; making it discovers the cluster
        manager = client.nodes_manager
        if self.ready:
            manager.initialize()
        slots: list[Node | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        known = self._slots or slots
        named: dict[str, Node] = {}
        for slot, holders in list(manager.slots_cache.items()):
            primary = holders[0]
            node = named.get(primary.name)
            if node is None:
                pool = primary.redis_connection.connection_pool
                connection = ConnectionSettings.from_pool(
                    pool.connection_class, pool.connection_kwargs, self.settings)
                self._template = connection
                node = named[primary.name] = self.node(connection)
            current = known[slot]
            if node.health.is_open and current is not None and not current.health.is_open:
                # a node that has not yet heard of a failover names the dead primary again:
                # keep the answering one (a MOVED corrects this if the slot really went back)
                node = current
            slots[slot] = node
        self._slots = slots
        self._primaries = list({id(n): n for n in slots if n is not None}.values())
        self.ready = True

    def _at(self, detail: str) -> tuple[int, Node]:
        slot, _, address = detail.partition(" ")
        host, _, port = address.rpartition(":")
        host = host or str(self._template.kwargs.get("host", "localhost"))  # "" = the same host
        return int(slot), self.node(self._template.at(host, int(port)))

    def moved(self, detail: str) -> Node:
        slot, node = self._at(detail)
        self._slots[slot] = node
        if node not in self._primaries:
            self._primaries = [*self._primaries, node]
        self.refresh_soon()  # a slot moved: others may have too
        return node

    def asked(self, detail: str) -> Node:
        return self._at(detail)[1]
