"""Free-port helper shared by the local service launchers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The OS picks it from the ephemeral range, which sits below 65535, so
    callers must not derive other ports from it by adding offsets.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """Return `count` distinct free ports (sockets held open together so they differ)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def free_port_pairs(count: int, offset: int = 10000) -> list[tuple[int, int]]:
    """Return `count` pairs (p, p + offset) whose ports are all free, distinct and <= 65535.

    SeaweedFS derives a gRPC port as "HTTP port + 10000" in places that ignore the
    explicit -*.port.grpc flags, so pairing ports that way keeps every code path
    pointing at the same listener.
    """
    held: list[socket.socket] = []
    pairs: list[tuple[int, int]] = []
    try:
        for _ in range(1000):
            if len(pairs) == count:
                return pairs
            low = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            low.bind(("127.0.0.1", 0))
            held.append(low)  # kept open so the OS does not hand it out again
            port = low.getsockname()[1]
            if port + offset > 65535:
                continue
            high = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                high.bind(("127.0.0.1", port + offset))
            except OSError:
                high.close()
                continue
            held.append(high)
            pairs.append((port, port + offset))
        raise RuntimeError(f"could not find {count} free port pairs {offset} apart")
    finally:
        for sock in held:
            sock.close()


def log_tail(path, lines: int = 30) -> str:
    """The last lines of a service's log, for error messages about it."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(could not read log: {exc})"
