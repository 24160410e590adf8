"""Real ``redis-server`` processes (standalone, cluster, sentinel) and a fault-injecting TCP proxy.

A plain helper module for the test suite (imported as ``servers``; pytest puts ``tests/`` on
``sys.path``). Every server is started by the test session itself, bound to 127.0.0.1 on a free
port, with its own temporary directory, and stopped again; nothing here ever touches a server that
someone else started. An ``atexit`` hook kills whatever is still running when the interpreter
exits (paused servers included).

When no ``redis-server`` binary can be found, :data:`REAL_REDIS` is ``False`` and
:class:`FakeRedisServer` (fakeredis speaking RESP over TCP) stands in for the standalone server.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from queue import Empty, SimpleQueue
from types import TracebackType
from typing import IO, Any, Protocol, Self

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

__all__ = [
    "FAKEREDIS_FALLBACK",
    "LOCALHOST",
    "REAL_REDIS",
    "REDIS_SERVER",
    "Endpoint",
    "FakeRedisServer",
    "RedisClusterServers",
    "RedisServer",
    "RedisServerError",
    "ReplyError",
    "SentinelServers",
    "StandaloneServer",
    "TcpProxy",
    "TlsFiles",
    "TlsRedisServer",
    "command",
    "find_redis_server",
    "free_port",
    "live_servers",
    "redis_server_version",
    "replicated",
    "tls_files",
    "wait_replicated",
]

LOCALHOST = "127.0.0.1"
_CANDIDATE_PATHS = (
    "/usr/bin/redis-server",
    "/usr/sbin/redis-server",
    "/usr/local/bin/redis-server",
)
_CLUSTER_SLOTS = 16384
_LOG_TAIL_CHARS = 4000


class RedisServerError(RuntimeError):
    """A server could not be started, did not become ready, or a cluster/failover did not form."""


class ReplyError(Exception):
    """An error reply (``-ERR ...``) from :func:`command`."""


class Endpoint(Protocol):
    """Anything with a loopback address: :class:`RedisServer`, :class:`FakeRedisServer`, ..."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


# --------------------------------------------------------------------------------------------
# discovery
# --------------------------------------------------------------------------------------------


def find_redis_server() -> str | None:
    """The path of a ``redis-server`` binary (``$PATH`` first, then the usual locations)."""
    found = shutil.which("redis-server")
    if found:
        return found
    for candidate in _CANDIDATE_PATHS:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@functools.cache
def redis_server_version(binary: str) -> tuple[int, int, int] | None:
    """``(7, 0, 15)`` for ``redis-server --version`` printing ``v=7.0.15``; ``None`` if unknown."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


#: The one reason a test may be skipped: there is no real server to run.
FAKEREDIS_FALLBACK = "redis-server not found: using fakeredis fallback"

REDIS_SERVER: str | None = find_redis_server()
#: ``True`` when a real ``redis-server`` exists; otherwise the fixtures fall back to fakeredis.
REAL_REDIS: bool = REDIS_SERVER is not None


@functools.cache
def _pdeathsig_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` when available (Linux, util-linux >= 2.33), else ``()``.

    A second safety net next to ``atexit``: the kernel kills the server if the test process dies
    without running its exit handlers (SIGTERM, SIGKILL, ``os._exit``).
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:
        help_text = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if "--pdeathsig" in help_text else ()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry if they lose a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# a minimal RESP2 client, so the harness's own checks do not depend on redis-py's parsing
# --------------------------------------------------------------------------------------------


def _encode_command(args: Sequence[str | bytes | int]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: IO[bytes]) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed while reading a reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return ReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        return stream.read(size + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected reply line {line!r}")


def command(host: str, port: int, *args: str | bytes | int, timeout: float = 2.0) -> Any:
    """Send one command over a new RESP2 connection and return the reply.

    Simple and bulk strings come back as ``bytes``, integers as ``int``, arrays as ``list``; an
    error reply raises :class:`ReplyError`; network problems raise ``OSError``.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_encode_command(args))
        with sock.makefile("rb") as stream:
            reply = _read_reply(stream)
    if isinstance(reply, ReplyError):
        raise reply
    return reply


def _info_fields(raw: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in raw.decode(errors="replace").splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            fields[key.strip()] = value.strip()
    return fields


def _pairs(flat: list[Any]) -> dict[str, Any]:
    """``[b'k1', v1, b'k2', v2]`` -> ``{'k1': v1, 'k2': v2}`` (values decoded when bytes)."""
    out: dict[str, Any] = {}
    for key, value in zip(flat[::2], flat[1::2], strict=True):
        out[key.decode()] = value.decode(errors="replace") if isinstance(value, bytes) else value
    return out


def replicated(primary: RedisServer, replica: RedisServer) -> bool:
    """Whether ``replica`` has everything ``primary`` wrote so far (replication offsets match).

    ``WAIT`` cannot say this for writes made on another connection: it counts the replicas that
    acknowledged the *calling* connection's writes, so on a fresh connection it answers at once.
    """
    mine = int(primary.info("replication")["master_repl_offset"])
    return int(replica.info("replication").get("master_repl_offset", -1)) >= mine


def wait_replicated(primary: RedisServer, replica: RedisServer, timeout: float = 10.0) -> None:
    """Wait until ``replica`` has everything ``primary`` wrote so far."""
    _wait_until(lambda: replicated(primary, replica), timeout, f"{replica!r} to catch up")


def _wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> float:
    """Poll ``predicate()`` (exceptions count as "not yet") until true; return seconds taken."""
    start = time.monotonic()
    deadline = start + timeout
    last_error: BaseException | None = None
    while True:
        try:
            if predicate():
                return time.monotonic() - start
        except (OSError, ReplyError, ValueError, KeyError, IndexError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise RedisServerError(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# process bookkeeping and the atexit safety net
# --------------------------------------------------------------------------------------------

_live_lock = threading.Lock()
_live: set[RedisServer] = set()


def _cleanup_all() -> None:
    """Kill every server still running: SIGCONT + SIGTERM to all, then SIGKILL stragglers."""
    with _live_lock:
        leftovers = list(_live)
    for server in leftovers:
        server._signal(signal.SIGCONT)
        server._signal(signal.SIGTERM)
    deadline = time.monotonic() + 3.0
    for server in leftovers:
        server._reap(max(0.0, deadline - time.monotonic()))
    for server in leftovers:
        server.stop()


atexit.register(_cleanup_all)


def _process_state(pid: int) -> str | None:
    """The state letter from ``/proc/<pid>/stat`` (``'T'`` = stopped), or ``None`` if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: the state follows the last ')'
    return stat.rpartition(")")[2].split()[0]


# --------------------------------------------------------------------------------------------
# standalone server
# --------------------------------------------------------------------------------------------


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with its own temporary directory.

    ``extra_args`` are appended to the command line (``["--maxmemory", "10mb"]``).
    ``config_text`` is written to a config file in the temporary directory and passed first (the
    server may rewrite it, as Sentinel does). ``sentinel=True`` starts the process in Sentinel
    mode. ``port=None`` picks a free port, retrying with another one if it is taken meanwhile.
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        config_text: str | None = None,
        sentinel: bool = False,
        binary: str | None = None,
        startup_timeout: float = 10.0,
        start: bool = True,
    ) -> None:
        found = binary or REDIS_SERVER
        if found is None:
            raise RedisServerError("redis-server not found")
        self.binary: str = found
        self.version: tuple[int, int, int] | None = redis_server_version(found)
        self.extra_args: tuple[str, ...] = tuple(extra_args)
        self.sentinel_mode: bool = sentinel
        self.startup_timeout: float = startup_timeout
        self._auto_port = port is None
        self._port: int = port if port is not None else free_port()
        self.dir: Path = Path(tempfile.mkdtemp(prefix="fr-redis-"))
        self.log_path: Path = self.dir / "server.log"
        self.config_path: Path | None = None
        if config_text is not None:
            self.config_path = self.dir / ("sentinel.conf" if sentinel else "redis.conf")
            self.config_path.write_text(config_text)
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._log_offset = 0
        self._paused = False
        self._stopped = False
        if start:
            self.start()

    # ---- addresses ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self._port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """The process exists and has not exited (it may be paused)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    def __repr__(self) -> str:
        mode = "sentinel" if self.sentinel_mode else "redis"
        return f"<RedisServer {mode} {LOCALHOST}:{self._port} pid={self.pid}>"

    # ---- clients --------------------------------------------------------------------------

    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` for this server (bytes replies; 5 s timeouts unless overridden)."""
        options: dict[str, Any] = {
            "host": LOCALHOST,
            "port": self._port,
            "db": 0,
            "decode_responses": False,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
        }
        options.update(kwargs)
        return redis.Redis(**options)

    def command(self, *args: str | bytes | int, timeout: float = 2.0) -> Any:
        """Run one command over a fresh raw connection (see :func:`command`)."""
        return command(LOCALHOST, self._port, *args, timeout=timeout)

    def info(self, section: str = "") -> dict[str, str]:
        raw = self.command("INFO", section) if section else self.command("INFO")
        return _info_fields(raw)

    def flushall(self) -> None:
        self.command("FLUSHALL")

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        try:
            text = self.log_path.read_bytes()[-chars:]
        except OSError:
            return "<no log>"
        return text.decode(errors="replace")

    # ---- lifecycle ------------------------------------------------------------------------

    def _command_line(self) -> list[str]:
        cmd = [self.binary]
        if self.config_path is not None:
            cmd.append(str(self.config_path))
        if self.sentinel_mode:
            cmd.append("--sentinel")
        cmd += [
            "--port", str(self._port),
            "--bind", LOCALHOST,
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.version is not None and self.version >= (7, 0, 0):
            # never wait for lagging replicas on SIGTERM (Redis 7 waits up to 10 s by default)
            cmd += ["--shutdown-on-sigterm", "nosave now"]
        cmd += list(self.extra_args)
        return cmd

    def _spawn(self) -> None:
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_offset = self._log_file.tell()
        self._paused = False
        cmd = self._command_line()
        # The parent-death signal fires when the *thread* that spawned the child exits, so it is
        # only used for servers started from the main thread (fixtures always are).
        if threading.current_thread() is threading.main_thread():
            cmd = [*_pdeathsig_prefix(), *cmd]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
        )
        with _live_lock:
            _live.add(self)

    def _new_log(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                data = log.read()
        except OSError:
            return ""
        return data[-_LOG_TAIL_CHARS:].decode(errors="replace")

    def _ping(self) -> bool:
        try:
            with socket.create_connection((LOCALHOST, self._port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.startswith((b"+PONG", b"-NOAUTH"))

    def _wait_ready(self) -> bool:
        """True once PING answers; False if the port was taken; raises on any other failure."""
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                log = self._new_log()
                if "Address already in use" in log or "Could not create server TCP" in log:
                    return False
                raise RedisServerError(
                    f"redis-server on port {self._port} exited with code {code} during startup;"
                    f" command: {self._command_line()}\n--- server log ---\n{log}"
                )
            if self._ping():
                return True
            if time.monotonic() >= deadline:
                self._signal(signal.SIGKILL)
                self._reap(5.0)
                raise RedisServerError(
                    f"redis-server on port {self._port} did not answer PING within"
                    f" {self.startup_timeout:.0f}s; command: {self._command_line()}\n"
                    f"--- server log ---\n{self._new_log()}"
                )
            time.sleep(0.02)

    def start(self) -> Self:
        """Start the process (no-op if running) and wait until it answers PING."""
        if self._stopped:
            raise RedisServerError("this RedisServer was stopped; create a new one")
        if self.running:
            return self
        attempts = 5 if self._auto_port else 1
        for _ in range(attempts):
            self._spawn()
            if self._wait_ready():
                return self
            self._reap(1.0)
            if self._auto_port:
                self._port = free_port()
        raise RedisServerError(
            f"redis-server could not bind a port after {attempts} attempt(s) (last: {self._port})\n"
            f"--- server log ---\n{self._new_log()}"
        )

    def _signal(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    def _reap(self, timeout: float) -> bool:
        """Wait for the process to exit; True if it has (or never existed)."""
        proc = self._proc
        if proc is None:
            return True
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the process and wait for it (a crash: no shutdown, state lost)."""
        self._signal(signal.SIGKILL)
        self._reap(10.0)
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the process stays alive (the kernel still accepts connections) but frozen."""
        if not self.running:
            raise RedisServerError(f"{self!r} is not running")
        self._signal(signal.SIGSTOP)
        self._paused = True
        pid = self.pid
        assert pid is not None
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _process_state(pid) not in (None, "T", "t"):
            time.sleep(0.005)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def ensure_running(self) -> Self:
        """Resume if paused, restart if dead; a no-op for a healthy server."""
        if self.paused:
            self.resume()
        if not self.running:
            self.restart()
        return self

    def restart(self) -> Self:
        """Kill the process if it runs, start it again on the same port, and wait until ready."""
        self.kill()
        self._auto_port = False  # clients (and cluster peers) know this port
        return self.start()

    def stop(self) -> None:
        """Terminate (SIGCONT + SIGTERM, SIGKILL after 5 s) and delete the temporary directory.

        Idempotent and safe if the process already died.
        """
        self._stopped = True
        if self._proc is not None and self._proc.poll() is None:
            self._signal(signal.SIGCONT)
            self._signal(signal.SIGTERM)
            if not self._reap(5.0):
                self._signal(signal.SIGKILL)
                self._reap(10.0)
        self._paused = False
        with _live_lock:
            _live.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# TLS: certificates generated for the test session, and a server speaking TLS
# --------------------------------------------------------------------------------------------


class TlsFiles:
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1 / localhost signed by it,
    and a client certificate signed by it, in ``directory`` (generated with ``cryptography``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca = directory / "ca.crt"
        self.server_cert = directory / "server.crt"
        self.server_key = directory / "server.key"
        self.client_cert = directory / "client.crt"
        self.client_key = directory / "client.key"

    def client_options(self, *, client_cert: bool = False) -> dict[str, Any]:
        """redis-py connection options that trust the CA (and present the client certificate)."""
        options: dict[str, Any] = {"ssl_ca_certs": str(self.ca), "ssl_cert_reqs": "required"}
        if client_cert:
            options.update(ssl_certfile=str(self.client_cert), ssl_keyfile=str(self.client_key))
        return options


@functools.cache
def tls_files() -> TlsFiles:
    """One set of certificates per test session (RSA 2048, valid for a day)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    files = TlsFiles(Path(tempfile.mkdtemp(prefix="fr-tls-")))
    now = datetime.datetime.now(datetime.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(path: Path, private: rsa.RSAPrivateKey) -> None:
        path.write_bytes(private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("fr-test-ca")).issuer_name(name("fr-test-ca"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def leaf(common: str, usage: x509.ObjectIdentifier, cert_path: Path, key_path: Path) -> None:
        private = key()
        builder = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca.subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.SubjectAlternativeName([
                       x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(LOCALHOST))
                   ]), critical=False))
        cert_path.write_bytes(builder.sign(ca_key, hashes.SHA256())
                              .public_bytes(serialization.Encoding.PEM))
        write_key(key_path, private)

    leaf("fr-test-server", ExtendedKeyUsageOID.SERVER_AUTH, files.server_cert, files.server_key)
    leaf("fr-test-client", ExtendedKeyUsageOID.CLIENT_AUTH, files.client_cert, files.client_key)
    atexit.register(shutil.rmtree, files.directory, ignore_errors=True)
    return files


class TlsRedisServer(RedisServer):
    """A ``redis-server`` with a TLS port (certificates from :func:`tls_files`) next to its plain
    port: clients under test use :attr:`tls_url`, the harness's own checks the plain port.

    ``auth_clients=True`` makes the server require a client certificate signed by the CA.
    """

    def __init__(self, extra_args: Sequence[str] = (), *, auth_clients: bool = False,
                 **kwargs: Any) -> None:
        self.files = tls_files()
        self.auth_clients = auth_clients
        self.tls_port = free_port()
        super().__init__(extra_args, **kwargs)

    @property
    def tls_url(self) -> str:
        return f"rediss://{LOCALHOST}:{self.tls_port}/0"

    def client_options(self) -> dict[str, Any]:
        """redis-py options for :attr:`tls_url` (with the client certificate when required)."""
        return self.files.client_options(client_cert=self.auth_clients)

    def _spawn(self) -> None:
        if self._auto_port and not _port_is_free(self.tls_port):
            self.tls_port = free_port()
        super()._spawn()

    def _command_line(self) -> list[str]:
        return [*super()._command_line(),
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(self.files.server_cert),
                "--tls-key-file", str(self.files.server_key),
                "--tls-ca-cert-file", str(self.files.ca),
                "--tls-auth-clients", "yes" if self.auth_clients else "no"]


# --------------------------------------------------------------------------------------------
# cluster
# --------------------------------------------------------------------------------------------


class RedisClusterServers:
    """A Redis Cluster of ``primaries`` primaries, each with ``replicas`` replicas, on 127.0.0.1.

    Formed directly with ``CLUSTER ADDSLOTSRANGE`` / ``CLUSTER MEET`` / ``CLUSTER REPLICATE``
    (no ``redis-cli``), then waits until every node reports ``cluster_state:ok`` with all 16384
    slots assigned and every replica is in sync. ``nodes`` lists the primaries first (as
    started: after a failover a replica may be the one serving a primary's slots).
    """

    def __init__(
        self,
        primaries: int = 3,
        *,
        replicas: int = 0,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
        ready_timeout: float = 20.0,
        start: bool = True,
    ) -> None:
        if primaries < 1:
            raise ValueError("a cluster needs at least one primary")
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.nodes: list[RedisServer] = []
        self.bus_ports: list[int] = []
        if start:
            self.start()

    @property
    def url(self) -> str:
        hosts = ",".join(f"{node.host}:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        return [
            ClusterNode(node.host, node.port)  # type: ignore[no-untyped-call]
            for node in self.nodes
        ]

    def client(self, **kwargs: Any) -> RedisCluster:
        options: dict[str, Any] = {
            "startup_nodes": self.startup_nodes,
            "decode_responses": False,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
        }
        options.update(kwargs)
        return RedisCluster(**options)

    def _node_args(self, bus_port: int | None) -> list[str]:
        args = [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",  # relative to the node's --dir
            "--cluster-node-timeout", str(self.node_timeout_ms),
            "--cluster-announce-ip", LOCALHOST,
        ]  # fmt: skip
        if bus_port is not None:
            args += ["--cluster-port", str(bus_port)]
        return args + list(self.extra_args)

    def start(self) -> Self:
        try:
            self._start_nodes()
            self._form()
            self.wait_ready()
            if self.replicas:
                self._replicate()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self) -> None:
        version = redis_server_version(REDIS_SERVER) if REDIS_SERVER else None
        explicit_bus = version is not None and version >= (7, 0, 0)
        for _ in range(self.primaries * (1 + self.replicas)):
            if explicit_bus:
                bus_port = free_port()
                node = RedisServer(self._node_args(bus_port))
            else:  # Redis < 7: the bus is always port + 10000
                bus_port = -1
                for _attempt in range(20):
                    port = free_port()
                    if port + 10000 <= 65535 and _port_is_free(port + 10000):
                        break
                node = RedisServer(self._node_args(None), port=port)
                bus_port = node.port + 10000
            self.nodes.append(node)
            self.bus_ports.append(bus_port)

    def _form(self) -> None:
        count = self.primaries
        bounds = [round(i * _CLUSTER_SLOTS / count) for i in range(count + 1)]
        version = self.nodes[0].version
        for index, node in enumerate(self.nodes[:count]):
            node.command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            first, last = bounds[index], bounds[index + 1] - 1
            if version is not None and version >= (7, 0, 0):
                node.command("CLUSTER", "ADDSLOTSRANGE", first, last)
            else:
                node.command("CLUSTER", "ADDSLOTS", *range(first, last + 1))
        first_node = self.nodes[0]
        for node, bus_port in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
            if version is not None and version >= (7, 0, 0):
                first_node.command("CLUSTER", "MEET", node.host, node.port, bus_port)
            else:
                first_node.command("CLUSTER", "MEET", node.host, node.port)

    def _replicate(self) -> None:
        """Make node ``primaries + i`` a replica of primary ``i % primaries``; wait for sync."""
        ids = [node.command("CLUSTER", "MYID").decode() for node in self.nodes[:self.primaries]]
        replicas = self.nodes[self.primaries:]
        for index, node in enumerate(replicas):
            node.command("CLUSTER", "REPLICATE", ids[index % self.primaries])

        def synced() -> bool:
            return all(node.info("replication").get("master_link_status") == "up"
                       for node in replicas) and all(self._node_ready(n) for n in self.nodes)

        _wait_until(synced, self.ready_timeout, "the cluster's replicas to sync")

    def primary_index(self, key: str | bytes) -> int:
        """Index in :attr:`nodes` of the node now serving ``key``'s slot (asks node 0, or the
        first live node)."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        live = next(node for node in self.nodes if node.running and not node.paused)
        for first, last, primary, *_ in live.command("CLUSTER", "SLOTS"):
            if first <= slot <= last:
                port = int(primary[1])
                return next(i for i, node in enumerate(self.nodes) if node.port == port)
        raise RedisServerError(f"no node serves slot {slot}")

    def wait_for_failover(self, killed: int, timeout: float = 30.0) -> float:
        """After ``nodes[killed]`` (a primary) died: wait until one of its replicas serves its
        slots and every live node reports ``cluster_state:ok`` with all slots ok. Returns the
        seconds waited."""
        dead_port = self.nodes[killed].port
        live = [node for node in self.nodes if node.running]

        def promoted() -> bool:
            for node in live:
                info = _info_fields(node.command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok" or int(
                        info.get("cluster_slots_ok", 0)) != _CLUSTER_SLOTS:
                    return False
                owners = {int(entry[2][1]) for entry in node.command("CLUSTER", "SLOTS")}
                if dead_port in owners:
                    return False
            return True

        return _wait_until(promoted, timeout, f"a replica to take over from port {dead_port}")

    def _node_ready(self, node: RedisServer) -> bool:
        info = _info_fields(node.command("CLUSTER", "INFO"))
        if info.get("cluster_state") != "ok":
            return False
        if int(info.get("cluster_slots_assigned", 0)) != _CLUSTER_SLOTS:
            return False
        if int(info.get("cluster_slots_ok", 0)) != _CLUSTER_SLOTS:
            return False
        if int(info.get("cluster_known_nodes", 0)) != len(self.nodes):
            return False
        lines = node.command("CLUSTER", "NODES").decode().splitlines()
        for line in lines:
            fields = line.split()
            flags = fields[2]
            if not fields[1].startswith(f"{LOCALHOST}:") or any(
                bad in flags for bad in ("handshake", "fail", "noaddr")
            ):
                return False
            if fields[7] != "connected":
                return False
        return True

    def wait_ready(self, timeout: float | None = None) -> float:
        """Wait until every node sees a healthy, fully covered cluster; returns seconds taken."""
        return _wait_until(
            lambda: all(self._node_ready(node) for node in self.nodes),
            self.ready_timeout if timeout is None else timeout,
            f"cluster {self.url} to reach cluster_state:ok",
        )

    def ensure_healthy(self) -> None:
        """Resume paused nodes, restart dead ones, and wait until the cluster is ok again."""
        for node in self.nodes:
            if node.paused:
                node.resume()
            if not node.running:
                node.restart()
        self.wait_ready()

    def cluster_info(self, node_index: int = 0) -> dict[str, str]:
        return _info_fields(self.nodes[node_index].command("CLUSTER", "INFO"))

    def flushall(self) -> None:
        """FLUSHALL on every live primary (replicas follow; they refuse writes)."""
        for node in self.nodes:
            if node.running and not node.paused and node.command("ROLE")[0] == b"master":
                node.flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


# --------------------------------------------------------------------------------------------
# sentinel
# --------------------------------------------------------------------------------------------


class SentinelServers:
    """A primary, one replica and one Sentinel (quorum 1) monitoring them as ``mymaster``.

    ``.primary`` and ``.replica`` always name the processes as started; after a failover the
    replica is the one serving writes (see :meth:`master_address`).
    """

    def __init__(
        self,
        service_name: str = "mymaster",
        *,
        down_after_ms: int = 500,
        failover_timeout_ms: int = 2000,
        ready_timeout: float = 15.0,
    ) -> None:
        self.service_name = service_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.ready_timeout = ready_timeout
        self._killed_at: float | None = None
        self._servers: list[RedisServer] = []
        # no 5 s wait for more replicas before a (diskless) full sync
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        try:
            self.primary: RedisServer = self._add(RedisServer(fast_sync))
            self.replica: RedisServer = self._add(
                RedisServer([*fast_sync, "--replicaof", LOCALHOST, str(self.primary.port)])
            )
            _wait_until(self._replica_synced, ready_timeout, f"replica {self.replica.port} to sync")
            self.sentinel: RedisServer = self._add(
                RedisServer(config_text=self._sentinel_config(), sentinel=True)
            )
            _wait_until(
                self._sentinel_ready, ready_timeout, "the sentinel to see primary and replica"
            )
        except BaseException:
            self.stop()
            raise

    def _add(self, server: RedisServer) -> RedisServer:
        self._servers.append(server)
        return server

    def _sentinel_config(self) -> str:
        name, port = self.service_name, self.primary.port
        return (
            f"sentinel monitor {name} {LOCALHOST} {port} 1\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )

    def _replica_synced(self) -> bool:
        info = self.replica.info("replication")
        return info.get("master_link_status") == "up"

    def _master_state(self) -> dict[str, Any]:
        return _pairs(self.sentinel.command("SENTINEL", "MASTER", self.service_name))

    def _master_healthy(self, port: int) -> bool:
        """The sentinel's master entry is ``port`` with flags exactly ``master``.

        That is what clients such as ``redis.sentinel.Sentinel`` need: they refuse a master that
        is flagged ``s_down``/``o_down``. Right after a failover the sentinel's fresh link to the
        new primary can take up to its 1 s reconnect period, which with a short
        ``down-after-milliseconds`` briefly flags the new primary as down; waiting for a clean
        ``master`` entry rides that out.
        """
        state = self._master_state()
        return int(state["port"]) == port and state["flags"] == "master"

    def _sentinel_ready(self) -> bool:
        if not self._master_healthy(self.primary.port):
            return False
        replicas = self.sentinel.command("SENTINEL", "REPLICAS", self.service_name)
        for entry in replicas:
            fields = _pairs(entry)
            if (
                int(fields["port"]) == self.replica.port
                and fields["flags"] == "slave"
                and fields.get("master-link-status") == "ok"
            ):
                return True
        return False

    @property
    def url(self) -> str:
        return f"redis+sentinel://{LOCALHOST}:{self.sentinel.port}/{self.service_name}/0"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(LOCALHOST, self.sentinel.port)]

    def master_address(self) -> tuple[str, int]:
        """What the sentinel currently reports for the service (``SENTINEL get-master-addr``)."""
        host, port = self.sentinel.command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service_name)
        return host.decode(), int(port)

    def kill_primary(self) -> None:
        """SIGKILL the original primary and remember when (for :meth:`wait_for_failover`)."""
        self._killed_at = time.monotonic()
        self.primary.kill()

    def wait_for_failover(self, timeout: float = 15.0) -> float:
        """Wait until the failover to the replica is complete and clients can use it.

        Complete means: ``SENTINEL get-master-addr-by-name`` returns the replica, the replica
        reports ``role:master``, and the sentinel's master entry is the replica with no
        ``s_down``/``o_down``/``disconnected``/``failover_in_progress`` flag (see
        :meth:`_master_healthy`). Returns the seconds since :meth:`kill_primary` (or since this
        call, without a kill).
        """
        start = self._killed_at if self._killed_at is not None else time.monotonic()

        def promoted() -> bool:
            if self.master_address()[1] != self.replica.port:
                return False
            role = self.replica.command("ROLE")
            if not (role and role[0] == b"master"):
                return False
            return self._master_healthy(self.replica.port)

        try:
            _wait_until(promoted, timeout, "the sentinel failover", interval=0.05)
        except RedisServerError as exc:
            raise RedisServerError(
                f"{exc}\n--- sentinel log ---\n{self.sentinel.log_tail()}"
            ) from None
        return time.monotonic() - start

    def stop(self) -> None:
        for server in reversed(self._servers):  # sentinel first: no failover during teardown
            server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# fault-injecting TCP proxy
# --------------------------------------------------------------------------------------------

_MAX_BUFFERED = 1 << 20  # stop reading a side while this much is queued towards the other


class _ProxyConnection:
    __slots__ = ("client", "client_eof", "interest", "to_client", "to_upstream", "upstream",
                 "upstream_eof")  # fmt: skip

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.to_upstream: deque[list[Any]] = deque()  # [due monotonic time, bytes]
        self.to_client: deque[list[Any]] = deque()
        self.client_eof = False
        self.upstream_eof = False
        self.interest: dict[socket.socket, int] = {}


def _queued(queue: deque[list[Any]]) -> int:
    return sum(len(item[1]) for item in queue)


class TcpProxy:
    """A TCP proxy on a free 127.0.0.1 port in front of ``target`` (anything with host/port).

    One background thread multiplexes all connections with ``selectors``. Faults:

    * :meth:`set_latency` delays every server→client chunk (so each round trip) by ``seconds``;
      the command itself reaches the server immediately, only the reply is late.
    * :meth:`blackhole` ``(True)`` keeps accepting connections but forwards nothing in either
      direction (data is held, as TCP would during a partition, and flows again when switched off).
    * :meth:`reset_all` closes every current connection with a TCP RST.
    """

    def __init__(self, target: Endpoint | tuple[str, int]) -> None:
        if isinstance(target, tuple):
            self.target_host, self.target_port = target
        else:
            self.target_host, self.target_port = target.host, target.port
        self._latency = 0.0
        self._blackhole = False
        self._stopping = False
        self._conns: set[_ProxyConnection] = set()
        self._commands: SimpleQueue[tuple[str, threading.Event]] = SimpleQueue()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOCALHOST, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "listener")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "waker")
        self._thread = threading.Thread(
            target=self._run, name=f"TcpProxy:{self._port}", daemon=True
        )
        self._thread.start()

    # ---- public API -----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self._port}/0"

    @property
    def latency(self) -> float:
        return self._latency

    @property
    def blackholed(self) -> bool:
        return self._blackhole

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` connecting through the proxy (5 s timeouts unless overridden)."""
        options: dict[str, Any] = {
            "host": LOCALHOST,
            "port": self._port,
            "db": 0,
            "decode_responses": False,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
        }
        options.update(kwargs)
        return redis.Redis(**options)

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency = float(seconds)
        self._wake()

    def blackhole(self, on: bool = True) -> None:
        self._blackhole = on
        self._wake()

    def heal(self) -> None:
        """No latency, no blackhole."""
        self._latency = 0.0
        self.blackhole(False)

    def reset_all(self) -> None:
        """Close every open connection with RST; returns once done (new connections still work)."""
        self._call("reset")

    def stop(self) -> None:
        """Close all connections and the listener; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self._wake()
        self._thread.join(5.0)
        if self._thread.is_alive():  # pragma: no cover - the loop never blocks for long
            raise RuntimeError("TcpProxy thread did not stop")
        self._wake_w.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- event loop -----------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _call(self, name: str) -> None:
        if self._stopping or not self._thread.is_alive():
            return
        done = threading.Event()
        self._commands.put((name, done))
        self._wake()
        if not done.wait(5.0):
            raise RuntimeError(f"TcpProxy did not process {name!r}")

    def _run(self) -> None:
        try:
            while not self._stopping:
                self._process_commands()
                now = time.monotonic()
                for conn in list(self._conns):
                    self._flush(conn, now)
                for conn in self._conns:
                    self._update_interest(conn, now)
                for key, mask in self._selector.select(self._next_timeout(now)):
                    tag = key.data
                    if tag == "listener":
                        self._accept()
                    elif tag == "waker":
                        with contextlib.suppress(OSError):
                            while self._wake_r.recv(4096):
                                pass
                    elif mask & selectors.EVENT_READ:
                        conn, from_client = tag
                        if conn in self._conns:
                            self._read(conn, from_client)
        finally:
            for conn in list(self._conns):
                self._close(conn, reset=True)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._process_commands()  # release anybody waiting

    def _process_commands(self) -> None:
        while True:
            try:
                name, done = self._commands.get_nowait()
            except Empty:
                return
            if name == "reset":
                for conn in list(self._conns):
                    self._close(conn, reset=True)
            done.set()

    def _next_timeout(self, now: float) -> float:
        timeout = 0.5
        if self._blackhole:
            return timeout
        for conn in self._conns:
            for queue in (conn.to_upstream, conn.to_client):
                if queue:
                    timeout = min(timeout, max(0.0, queue[0][0] - now))
        return timeout

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                upstream = socket.create_connection(
                    (self.target_host, self.target_port), timeout=2.0
                )
            except OSError:
                _abort(client)  # upstream down: the client sees a reset, as with a dead server
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conns.add(_ProxyConnection(client, upstream))

    def _read(self, conn: _ProxyConnection, from_client: bool) -> None:
        src = conn.client if from_client else conn.upstream
        try:
            data = src.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn, reset=True)
            return
        if not data:
            if from_client:
                conn.client_eof = True
            else:
                conn.upstream_eof = True
            return
        if from_client:
            conn.to_upstream.append([time.monotonic(), data])
        else:
            conn.to_client.append([time.monotonic() + self._latency, data])

    def _flush(self, conn: _ProxyConnection, now: float) -> None:
        if not self._blackhole:
            for queue, dst in ((conn.to_upstream, conn.upstream), (conn.to_client, conn.client)):
                while queue and queue[0][0] <= now:
                    data: bytes = queue[0][1]
                    try:
                        sent = dst.send(data)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        self._close(conn, reset=True)
                        return
                    if sent < len(data):
                        queue[0][1] = data[sent:]
                        break
                    queue.popleft()
        if (conn.client_eof and not conn.to_upstream) or (conn.upstream_eof and not conn.to_client):
            self._close(conn, reset=False)

    def _update_interest(self, conn: _ProxyConnection, now: float) -> None:
        for sock, eof, inbound, outbound, from_client in (
            (conn.client, conn.client_eof, conn.to_upstream, conn.to_client, True),
            (conn.upstream, conn.upstream_eof, conn.to_client, conn.to_upstream, False),
        ):
            events = 0
            if not self._blackhole:
                if not eof and _queued(inbound) < _MAX_BUFFERED:
                    events |= selectors.EVENT_READ
                if outbound and outbound[0][0] <= now:  # due but not sent: the socket was full
                    events |= selectors.EVENT_WRITE
            current = conn.interest.get(sock, 0)
            if events == current:
                continue
            if current == 0:
                self._selector.register(sock, events, (conn, from_client))
            elif events == 0:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, events, (conn, from_client))
            conn.interest[sock] = events

    def _close(self, conn: _ProxyConnection, *, reset: bool) -> None:
        self._conns.discard(conn)
        for sock in (conn.client, conn.upstream):
            if conn.interest.pop(sock, 0):
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(sock)
            if reset:
                _abort(sock)
            else:
                sock.close()


def _abort(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer gets a RST instead of a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# --------------------------------------------------------------------------------------------
# fakeredis fallback (only when there is no redis-server binary)
# --------------------------------------------------------------------------------------------


class FakeRedisServer:
    """fakeredis served over TCP on 127.0.0.1, standing in for :class:`RedisServer`.

    Supports ``host``/``port``/``url``/``client()``/``flushall()``/``stop()``; no process-level
    faults (kill, pause, restart).
    """

    def __init__(self) -> None:
        from fakeredis import TcpFakeServer

        self._port = free_port()
        self._server = TcpFakeServer((LOCALHOST, self._port), server_type="redis")
        self._server.daemon_threads = True  # never block interpreter exit on a client thread
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeRedisServer:{self._port}",
            daemon=True,
        )
        self._thread.start()
        self._stopped = False

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self._port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        options: dict[str, Any] = {
            "host": LOCALHOST,
            "port": self._port,
            "db": 0,
            "decode_responses": False,
            "socket_timeout": 5.0,
            "socket_connect_timeout": 5.0,
        }
        options.update(kwargs)
        return redis.Redis(**options)

    def flushall(self) -> None:
        command(LOCALHOST, self._port, "FLUSHALL")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: What the standalone fixtures hand out: a real server, or the fakeredis stand-in.
StandaloneServer = RedisServer | FakeRedisServer


def live_servers() -> list[RedisServer]:
    """The servers started by this process that have not been stopped (for diagnostics)."""
    with _live_lock:
        return list(_live)


def connections_named(url: str, name: str) -> list[dict[str, Any]]:
    """The server's connections whose ``CLIENT SETNAME`` is ``name`` (``CLIENT LIST`` rows)."""
    admin = redis.Redis.from_url(url)
    try:
        return [c for c in admin.client_list() if c.get("name") == name]
    finally:
        admin.close()


def all_closed(url: str, name: str, timeout: float = 5.0) -> bool:
    """True once the server holds no connection named ``name`` (it learns of a close on its own
    time: poll up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while connections_named(url, name) and time.monotonic() < deadline:
        time.sleep(0.01)
    return connections_named(url, name) == []
