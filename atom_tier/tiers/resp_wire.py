"""The shared tier's data path on raw sockets: pipelined SET NX sent from the value's parts
and GET read straight into the caller's buffers, so each payload byte is moved once.

Why not redis-py for these two commands: it spends about twice a raw ``sendmsg``'s time on a
256 KiB SET, needs the value in one buffer (a join: one more copy), and on GET hiredis builds
a ``bytes`` object per reply that is then copied into the destination (docs/architecture.md,
"Shared tier: server and client library"). Only a standalone server over plain TCP or a unix
socket is served here, speaking RESP2; TLS and clusters stay on redis-py.

Errors: anything wrong with the transport (refused, reset, timeout, a reply that is not
RESP) raises ``OSError`` (``TimeoutError`` for a timeout) and the connection is closed,
never reused mid-reply; an error reply is a :class:`ReplyError` in place of that reply,
except a refused AUTH or SELECT on connecting, which is raised. The timeout bounds each
connect, send and receive. No redis-py here: the caller maps both to its own errors.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

Buffer = bytes | bytearray | memoryview

# Replies a lean command can get: +simple string, :integer, $bulk (None: nil), -error.
Reply = str | int | bytes | None

_CRLF = b"\r\n"
# Longest line read before a payload: "$<length>\r\n" fits; a larger read would pull payload
# bytes into the line buffer, to be copied again.
_LINE_READ = 64
# Replies with no payload after them (SET, EXISTS, AUTH) are read in pieces of this.
_REPLIES_READ = 4096
_MAX_LINE = 1 << 20
# iovec entries per sendmsg call (Linux IOV_MAX is 1024).
_MAX_PARTS = 512
# Bulk replies read into scratch (values of an unexpected length) are read in pieces of this.
_SCRATCH_PIECE = 1 << 20


class ReplyError(Exception):
    """An error reply from the server (``-OOM ...``, ``-WRONGTYPE ...``, ``-NOAUTH ...``)."""

    @property
    def code(self) -> str:
        return str(self).split(" ", 1)[0]


class ProtocolError(ConnectionError):
    """The server sent something that is not the RESP2 reply expected: the stream is lost."""


@dataclass(frozen=True)
class Endpoint:
    """Where and how to connect: ``path`` for a unix socket, else ``host`` and ``port``."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0


def _command(*args: Buffer) -> bytes:
    """One RESP command whose arguments are all small enough to join."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out += (b"$%d\r\n" % len(arg), bytes(arg), _CRLF)
    return b"".join(out)


class WireConnection:
    """One socket and its read buffer; used by one thread at a time (see :class:`WirePool`)."""

    def __init__(self, endpoint: Endpoint, timeout_s: float) -> None:
        if endpoint.path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.settimeout(timeout_s)
                self.sock.connect(endpoint.path)
            except BaseException:
                self.sock.close()
                raise
        else:
            address = (endpoint.host, endpoint.port)
            self.sock = socket.create_connection(address, timeout=timeout_s)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._line = bytearray(_REPLIES_READ * 2)
        self._start = self._end = 0
        try:
            self._hello(endpoint)
        except BaseException:
            self.sock.close()
            raise

    def _hello(self, endpoint: Endpoint) -> None:
        commands = []
        if endpoint.password is not None:
            user = () if endpoint.username is None else (endpoint.username.encode(),)
            commands.append(_command(b"AUTH", *user, endpoint.password.encode()))
        if endpoint.db:
            commands.append(_command(b"SELECT", str(endpoint.db).encode()))
        if not commands:
            return
        self.send([b"".join(commands)])
        for _ in commands:
            reply = self.read_reply()
            if isinstance(reply, ReplyError):
                raise reply

    def close(self) -> None:
        self.sock.close()

    def idle_and_open(self) -> bool:
        """Whether the idle connection is still usable: nothing to read (a server that
        restarted closed it, and anything readable would desync the replies). A zero-timeout
        poll: a peeking recv on a socket with a timeout waits that timeout out, and select
        refuses descriptors above 1023."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    # -- sending ---------------------------------------------------------------------------
    def send(self, parts: Sequence[Buffer]) -> None:
        """Send ``parts`` in order with scatter writes, looping over partial sends."""
        views = [memoryview(p).cast("B") for p in parts if len(p)]
        first = 0
        while first < len(views):
            sent = self.sock.sendmsg(views[first : first + _MAX_PARTS])
            while first < len(views) and sent >= views[first].nbytes:
                sent -= views[first].nbytes
                first += 1
            if sent:
                views[first] = views[first][sent:]

    # -- receiving -------------------------------------------------------------------------
    def _fill(self, read_size: int) -> None:
        if self._start == self._end:
            self._start = self._end = 0
        elif self._start and self._end + read_size > len(self._line):
            size = self._end - self._start
            self._line[:size] = self._line[self._start : self._end]
            self._start, self._end = 0, size
        if self._end + read_size > len(self._line):  # a long line: an error reply's text
            if len(self._line) >= _MAX_LINE:
                raise ProtocolError(f"a reply line longer than {_MAX_LINE} bytes")
            self._line.extend(bytes(len(self._line)))
        got = self.sock.recv_into(memoryview(self._line)[self._end : self._end + read_size])
        if not got:
            raise ConnectionResetError("the server closed the connection")
        self._end += got

    def _read_line(self, read_size: int) -> bytes:
        while True:
            found = self._line.find(_CRLF, self._start, self._end)
            if found >= 0:
                line = bytes(self._line[self._start : found])
                self._start = found + 2
                return line
            self._fill(read_size)

    def read_into(self, out: memoryview) -> None:
        """Fill ``out`` from the stream: buffered bytes first, then straight from the socket."""
        done = min(self._end - self._start, out.nbytes)
        if done:
            out[:done] = self._line[self._start : self._start + done]
            self._start += done
        while done < out.nbytes:
            got = self.sock.recv_into(out[done:])
            if not got:
                raise ConnectionResetError("the server closed the connection mid-reply")
            done += got

    def _read_crlf(self) -> None:
        end = bytearray(2)
        self.read_into(memoryview(end))
        if end != _CRLF:
            raise ProtocolError("a bulk reply without its CRLF")

    def _header(self, read_size: int) -> tuple[bytes, bytes]:
        line = self._read_line(read_size)
        if not line:
            raise ProtocolError("an empty reply line")
        return line[:1], line[1:]

    def read_reply(self) -> Reply | ReplyError:
        """One RESP2 reply that is not an array; bulk strings read into a new ``bytes``."""
        kind, rest = self._header(_REPLIES_READ)
        if kind == b"$":
            length = _length(rest)
            if length < 0:
                return None
            value = bytearray(length)
            self._read_bulk_pieces(memoryview(value))
            return bytes(value)
        return _simple(kind, rest)

    def _read_bulk_pieces(self, value: memoryview) -> None:
        for first in range(0, value.nbytes, _SCRATCH_PIECE):
            self.read_into(value[first : first + _SCRATCH_PIECE])
        self._read_crlf()

    def read_bulk_into(self, parts: Sequence[memoryview]) -> bool | bytes | ReplyError | None:
        """Read one reply expected to be a bulk string of ``sum(parts)`` bytes.

        True: it had that length and now fills ``parts`` in order. bytes: a value of another
        length, read whole into scratch. None: nil (no such key). ReplyError: an error reply.
        """
        kind, rest = self._header(_LINE_READ)
        if kind != b"$":
            reply = _simple(kind, rest)
            if isinstance(reply, ReplyError):
                return reply
            raise ProtocolError(f"a {kind!r} reply where a bulk string was expected")
        length = _length(rest)
        if length < 0:
            return None
        if length != sum(p.nbytes for p in parts):
            value = bytearray(length)
            self._read_bulk_pieces(memoryview(value))
            return bytes(value)
        for part in parts:
            if part.nbytes:
                self.read_into(part)
        self._read_crlf()
        return True


def _length(text: bytes) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"a bulk length that is not a number: {text[:20]!r}") from None


def _simple(kind: bytes, rest: bytes) -> Reply | ReplyError:
    if kind == b"+":
        return rest.decode(errors="replace")
    if kind == b"-":
        return ReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return _length(rest)
    raise ProtocolError(f"an unexpected reply type {kind!r}")


class WirePool:
    """Connections to one server, thread-safe: a thread takes one for a whole exchange and
    gives it back only when every reply it asked for was read."""

    def __init__(self, endpoint: Endpoint, timeout_s: float, max_idle: int = 16) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        self._idle: list[WireConnection] = []
        self._lock = threading.Lock()

    @property
    def idle(self) -> int:
        """Connections waiting in the pool."""
        return len(self._idle)

    def _take(self) -> WireConnection:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return WireConnection(self.endpoint, self.timeout_s)
            if connection.idle_and_open():
                return connection
            connection.close()

    def _give_back(self, connection: WireConnection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def set_absent(
        self, items: Sequence[tuple[bytes, Sequence[Buffer]]]
    ) -> list[bool | ReplyError]:
        """SET key value NX for each (key, value parts), pipelined: all sent, then all
        replies read. True stored, False already there, or the error reply."""
        parts: list[Buffer] = []
        for key, value in items:
            size = sum(memoryview(p).nbytes for p in value)
            parts += (b"*4\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n" % (len(key), key, size), *value)
            parts.append(b"\r\n$2\r\nNX\r\n")
        replies: list[bool | ReplyError] = []
        connection = self._take()
        try:
            connection.send(parts)
            for _ in items:
                reply = connection.read_reply()
                if isinstance(reply, ReplyError):
                    replies.append(reply)
                elif reply == "OK" or reply is None:
                    replies.append(reply == "OK")
                else:
                    raise ProtocolError(f"SET NX answered {reply!r}")
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return replies

    def exists(self, keys: Sequence[bytes]) -> list[bool | ReplyError]:
        """EXISTS of each key, pipelined (one command per key: a multi-key EXISTS answers
        only how many)."""
        request = b"".join(b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%b\r\n" % (len(k), k) for k in keys)
        connection = self._take()
        try:
            connection.send([request])
            replies = [connection.read_reply() for _ in keys]
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        out: list[bool | ReplyError] = []
        for reply in replies:
            if not isinstance(reply, ReplyError | int):
                raise ProtocolError(f"EXISTS answered {reply!r}")
            out.append(reply if isinstance(reply, ReplyError) else reply == 1)
        return out

    def get_into(
        self, items: Sequence[tuple[bytes, Sequence[memoryview]]]
    ) -> list[bool | bytes | ReplyError | None]:
        """GET each key, pipelined, into its buffers: per key what
        :meth:`WireConnection.read_bulk_into` says."""
        request = b"".join(
            b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(key), key) for key, _ in items
        )
        connection = self._take()
        try:
            connection.send([request])
            replies = [connection.read_bulk_into(buffers) for _, buffers in items]
        except BaseException:
            connection.close()
            raise
        self._give_back(connection)
        return replies

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
