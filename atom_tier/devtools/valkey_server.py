"""Start and stop real Valkey/Redis servers on loopback, one or a three-node cluster, for tests
and benchmarks of the shared tier.

The server binary is `valkey-server` or `redis-server` (Debian's `redis-server` is what
`make test` installs), found next to this interpreter or on PATH, or passed in. Each server
runs in its own process group with a private work directory, no persistence (a cache that
restarts empty, as the shared tier's servers usually do), and `DEBUG` allowed from loopback so
fault tests can make it slow (`DEBUG SLEEP`).

Readiness and cluster set-up speak RESP over a plain socket (`command`), not through the client
library under test, so a client bug cannot hide behind a fixture that uses the same client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

SERVER_NAMES = ("valkey-server", "redis-server")
Reply = int | bytes | str | list["Reply"] | None


class ValkeyStartError(RuntimeError):
    """The server exited or did not answer PING in time; the message holds its log's end."""


class ReplyError(RuntimeError):
    """The server answered a command with an error reply (`-ERR ...`)."""


def find_server_binary(explicit: Path | None = None) -> Path:
    """`explicit`, else valkey-server or redis-server next to sys.executable, else on PATH."""
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"Valkey/Redis server binary {explicit} is not executable")
        return explicit
    for name in SERVER_NAMES:
        beside = Path(sys.executable).parent / name
        if os.access(beside, os.X_OK):
            return beside
    for name in SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    raise FileNotFoundError(
        "no valkey-server or redis-server next to the Python interpreter or on PATH; "
        "`make shared-tier-server` installs Debian's redis-server (needs root)"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _encode(args: Sequence[object]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _read_reply(stream: Any) -> Reply:
    line = stream.readline()
    if not line:
        raise ConnectionError("server closed the connection")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise ReplyError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        return None if size < 0 else stream.read(size + 2)[:-2]
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected RESP reply {line[:40]!r}")


def command(
    port: int,
    *args: object,
    password: str | None = None,
    username: str | None = None,
    timeout: float = 5.0,
) -> Reply:
    """One command on a new connection to 127.0.0.1:port (after AUTH when a password is given)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        stream = sock.makefile("rb")
        if password is not None:
            auth = ["AUTH", username, password] if username else ["AUTH", password]
            sock.sendall(_encode(auth))
            _read_reply(stream)
        sock.sendall(_encode(args))
        return _read_reply(stream)


def make_tls_files(directory: Path) -> None:
    """A throw-away CA (ca.crt) and a server certificate for 127.0.0.1 signed by it
    (server.crt, server.key), made with the openssl command-line tool."""
    directory.mkdir(parents=True, exist_ok=True)
    extensions = directory / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=atom-tier test CA", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "server.key", "-out", "server.csr")  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "server.ext",
            "-out", "server.crt")  # fmt: skip


@dataclass(frozen=True)
class AclUser:
    """An ACL user with full rights; with one set and no password, `default` is turned off."""

    name: str
    password: str


class ValkeyServer:
    """One real server on 127.0.0.1; `start()` waits for PING, `stop()`/`kill()` end it.

    Stopping keeps the port and work directory, so `start()` again brings the same address
    back (what "server down mid-run" fault tests need); it comes back empty.
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        *,
        binary: Path | None = None,
        port: int | None = None,
        password: str | None = None,
        acl_user: AclUser | None = None,
        maxmemory: int | None = None,
        maxmemory_policy: str | None = None,
        unix_socket: bool = False,
        cluster: bool = False,
        tls: bool = False,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
    ) -> None:
        self.binary = find_server_binary(binary)
        self._own_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="valkey-")) if work_dir is None else work_dir
        self.port = port if port is not None else free_port()
        self.password = password
        self.acl_user = acl_user
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.unix_socket_path = self.work_dir / "server.sock" if unix_socket else None
        self.cluster = cluster
        # Set explicitly: the default bus port, port + 10000, fails above port 55535.
        self.cluster_bus_port = free_port() if cluster else None
        # TLS listens on a second port; the plain port stays for readiness and set-up.
        self.tls_port = free_port() if tls else None
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.log_path = self.work_dir / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    # -- addresses ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """redis://[user:password@]127.0.0.1:port/0 with the credentials this server enforces."""
        return f"redis://{self._userinfo()}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        if self.unix_socket_path is None:
            raise RuntimeError("this server was started without unix_socket=True")
        return f"unix://{self._userinfo()}{self.unix_socket_path}?db=0"

    @property
    def tls_url(self) -> str:
        """rediss:// to the TLS port; clients verify it against `ca_path`."""
        if self.tls_port is None:
            raise RuntimeError("this server was started without tls=True")
        return f"rediss://{self._userinfo()}127.0.0.1:{self.tls_port}/0"

    @property
    def ca_path(self) -> Path:
        return self.work_dir / "tls" / "ca.crt"

    def _userinfo(self) -> str:
        if self.acl_user is not None:
            user = self.acl_user
            return f"{quote(user.name, safe='')}:{quote(user.password, safe='')}@"
        if self.password is not None:
            return f":{quote(self.password, safe='')}@"
        return ""

    # -- life cycle ---------------------------------------------------------------------------
    def arguments(self) -> list[str]:
        args = [
            str(self.binary),
            "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.work_dir),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--enable-debug-command", "local", "--loglevel", "notice",
        ]  # fmt: skip
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.acl_user is not None:
            user = self.acl_user
            args += ["--user", user.name, "on", f">{user.password}", "~*", "&*", "+@all"]
            if self.password is None:
                args += ["--user", "default", "off"]
        if self.maxmemory is not None:
            args += ["--maxmemory", str(self.maxmemory)]
        if self.maxmemory_policy is not None:
            args += ["--maxmemory-policy", self.maxmemory_policy]
        if self.unix_socket_path is not None:
            args += ["--unixsocket", str(self.unix_socket_path), "--unixsocketperm", "700"]
        if self.tls_port is not None:
            tls_dir = self.ca_path.parent
            args += [
                "--tls-port", str(self.tls_port),
                "--tls-cert-file", str(tls_dir / "server.crt"),
                "--tls-key-file", str(tls_dir / "server.key"),
                "--tls-ca-cert-file", str(self.ca_path),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        if self.cluster_bus_port is not None:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-port", str(self.cluster_bus_port),
                "--cluster-config-file", f"nodes-{self.port}.conf",
                "--cluster-node-timeout", "2000",
                # A cache keeps serving the slots it has while another node is down.
                "--cluster-require-full-coverage", "no",
            ]  # fmt: skip
        return args + self.extra_args

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ValkeyServer:
        if self.running:
            return self
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self.tls_port is not None and not self.ca_path.exists():
            make_tls_files(self.ca_path.parent)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.arguments(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work_dir,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ValkeyStartError(
                    f"{self.binary.name} on port {self.port} exited with "
                    f"{self.process.returncode}; log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if self.ping():
                    return
            except (OSError, ReplyError) as error:
                # LOADING and connection refused both mean "not yet".
                last_error = str(error)
            time.sleep(0.05)
        raise ValkeyStartError(
            f"{self.binary.name} on port {self.port} did not answer PING in "
            f"{self.startup_timeout:.0f} s ({last_error}); log {self.log_path}:\n{self.log_tail()}"
        )

    def ping(self) -> bool:
        return self.command("PING") == "PONG"

    def command(self, *args: object, timeout: float = 5.0) -> Reply:
        """A command authenticated as this server's own user (see `command`)."""
        if self.acl_user is not None:
            return command(
                self.port,
                *args,
                username=self.acl_user.name,
                password=self.acl_user.password,
                timeout=timeout,
            )
        return command(self.port, *args, password=self.password, timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (the server's own clean shutdown), SIGKILL after `timeout`; exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL: a crash, as a fault test wants it."""
        return self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                self.process.wait(timeout=10)
        return self.process.returncode

    def restart(self) -> ValkeyServer:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and delete the work directory when this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ValkeyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
