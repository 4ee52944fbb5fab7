#!/usr/bin/env python3
"""A hostile gRPC/HTTP client, to measure what clients can make a running
clerk-introspect hold (docs/operations.md, "Limits").

Speaks raw HTTP/2 over TCP (no TLS), answers PINGs and honours flow control
like a well-behaved client, and misbehaves only in what it sends:

  streams   CONNS connections x STREAMS streams each sending HEADERS and no
            message, refilled as the server ends them
  partial   CONNS x STREAMS streams each sending BYTES of a message that
            declares DECLARED bytes, then nothing
  idle      CONNS connections that complete the HTTP/2 preface and then
            only answer PINGs
  slowhead  CONNS sockets on the HTTP (metrics) port that send half a
            request head and then nothing

While the attack runs, a probe makes a new connection every second and
asks grpc.health.v1.Health/Check (or GET /healthz for slowhead), and the
server's RSS is read from /proc/PID/status. Prints one JSON line per second
and a summary. Needs only the Python standard library.

  scripts/hostile_client.py --addr 127.0.0.1:50051 --pid $(pidof clerk-introspect) \
      --mode streams --conns 400 --streams 256 --seconds 60
"""

import argparse
import asyncio
import json
import os
import socket
import struct
import sys
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1
VERIFY = "/introspect.v1.TokenIntrospection/Verify"
HEALTH = "/grpc.health.v1.Health/Check"


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name, value):
    """A literal header field without indexing, new name, no Huffman."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def request_headers(path):
    # Static table: 3 = :method POST, 6 = :scheme http.
    return bytes([0x83, 0x86]) + b"".join(
        literal(n, v)
        for n, v in [(":path", path), (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")]
    )


class Stats:
    def __init__(self):
        self.opened = 0
        self.ended_by_server = 0
        self.resets = 0
        self.goaways = 0
        self.connections_closed = 0


class H2Conn:
    """One client connection: reads frames, answers PINGs, tracks windows."""

    def __init__(self, reader, writer, stats):
        self.reader, self.writer, self.stats = reader, writer, stats
        self.next_stream = 1
        self.conn_window = 65535
        self.initial_stream_window = 65535
        self.stream_windows = {}
        self.open_streams = set()
        self.window_changed = asyncio.Event()
        self.closed = False
        self.stream_ended = asyncio.Event()

    async def start(self):
        self.writer.write(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 2, 0)))  # ENABLE_PUSH=0
        await self.writer.drain()
        self.reader_task = asyncio.ensure_future(self.read_loop())

    async def read_loop(self):
        try:
            while True:
                head = await self.reader.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                kind, flags = head[3], head[4]
                stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
                payload = await self.reader.readexactly(length) if length else b""
                if kind == SETTINGS and not flags & ACK:
                    for i in range(0, len(payload), 6):
                        ident, value = struct.unpack(">HI", payload[i : i + 6])
                        if ident == 4:
                            delta = value - self.initial_stream_window
                            self.initial_stream_window = value
                            for s in self.stream_windows:
                                self.stream_windows[s] += delta
                    self.writer.write(frame(SETTINGS, ACK, 0))
                elif kind == PING and not flags & ACK:
                    self.writer.write(frame(PING, ACK, 0, payload))
                elif kind == WINDOW_UPDATE:
                    inc = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                    if stream == 0:
                        self.conn_window += inc
                    elif stream in self.stream_windows:
                        self.stream_windows[stream] += inc
                    self.window_changed.set()
                elif kind in (HEADERS, DATA) and flags & END_STREAM or kind == RST_STREAM:
                    if stream in self.open_streams:
                        self.open_streams.discard(stream)
                        self.stream_windows.pop(stream, None)
                        if kind == RST_STREAM:
                            self.stats.resets += 1
                        else:
                            self.stats.ended_by_server += 1
                        self.stream_ended.set()
                elif kind == GOAWAY:
                    self.stats.goaways += 1
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        self.closed = True
        self.stats.connections_closed += 1
        self.stream_ended.set()
        self.window_changed.set()

    def open_stream(self, path):
        sid = self.next_stream
        self.next_stream += 2
        block = request_headers(path)
        self.writer.write(frame(HEADERS, END_HEADERS, sid, block))
        self.open_streams.add(sid)
        self.stream_windows[sid] = self.initial_stream_window
        self.stats.opened += 1
        return sid

    async def send_data(self, sid, data, end=False):
        """Sends `data` on `sid` within the flow-control windows."""
        while data and not self.closed and sid in self.open_streams:
            room = min(self.conn_window, self.stream_windows.get(sid, 0), 16384, len(data))
            if room <= 0:
                self.window_changed.clear()
                await self.window_changed.wait()
                continue
            chunk, data = data[:room], data[room:]
            self.conn_window -= room
            self.stream_windows[sid] -= room
            self.writer.write(frame(DATA, END_STREAM if end and not data else 0, sid, chunk))
            await self.writer.drain()


async def quietly(coroutine):
    """Runs `coroutine`, ignoring the connection closing under it."""
    try:
        await coroutine
    except (ConnectionError, OSError):
        pass


async def connect(addr, stats):
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    conn = H2Conn(reader, writer, stats)
    await conn.start()
    return conn


async def attacker(args, stats, stop):
    """One connection's misbehaviour, reconnecting when the server closes it."""
    while not stop.is_set():
        try:
            conn = await connect(args.addr, stats)
        except OSError:
            await asyncio.sleep(0.5)
            continue
        try:
            while not stop.is_set() and not conn.closed:
                if args.mode in ("streams", "partial"):
                    while len(conn.open_streams) < args.streams and not conn.closed:
                        sid = conn.open_stream(VERIFY)
                        if args.mode == "partial":
                            prefix = b"\x00" + struct.pack(">I", args.declared)
                            asyncio.ensure_future(quietly(conn.send_data(sid, prefix + b"\x0a" * args.bytes)))
                    await conn.writer.drain()
                    # Refill at most 20 times a second per connection: streams
                    # refused at once would otherwise starve this process.
                    await asyncio.sleep(0.05)
                conn.stream_ended.clear()
                try:
                    await asyncio.wait_for(conn.stream_ended.wait(), 1.0)
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        try:
            conn.writer.close()
        except (ConnectionError, OSError):
            pass
        if args.mode == "idle" and not stop.is_set():
            await asyncio.sleep(0.05)


async def slowhead(args, stop):
    host, port = args.addr.rsplit(":", 1)
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
            await writer.drain()
            await reader.read()  # until the server closes it
            writer.close()
        except OSError:
            await asyncio.sleep(0.2)


async def probe_grpc(addr, timeout):
    """A new connection and one Health/Check; True when answered SERVING."""
    stats = Stats()
    try:
        conn = await asyncio.wait_for(connect(addr, stats), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        sid = conn.open_stream(HEALTH)
        await conn.send_data(sid, b"\x00\x00\x00\x00\x00", end=True)
        await asyncio.wait_for(conn.stream_ended.wait(), timeout)
        return stats.ended_by_server == 1
    except (asyncio.TimeoutError, OSError):
        return False
    finally:
        conn.writer.close()


async def probe_http(addr, timeout):
    host, port = addr.rsplit(":", 1)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout)
        writer.close()
        return answer.startswith(b"HTTP/1.1 200")
    except (OSError, asyncio.TimeoutError):
        return False


def rss_mib(pid):
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", required=True, help="host:port (the gRPC port; the metrics port for slowhead)")
    p.add_argument("--pid", type=int, help="server pid, to read its RSS")
    p.add_argument("--mode", choices=["streams", "partial", "idle", "slowhead"], required=True)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--streams", type=int, default=256)
    p.add_argument("--bytes", type=int, default=60000, help="partial: bytes of the message sent")
    p.add_argument("--declared", type=int, default=65000, help="partial: length the message prefix declares")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--after", type=float, default=5, help="seconds to keep measuring RSS after the attack stops")
    p.add_argument("--probe-timeout", type=float, default=5)
    args = p.parse_args()

    stats, stop = Stats(), asyncio.Event()
    rss_before = rss_mib(args.pid)
    if args.mode == "slowhead":
        tasks = [asyncio.ensure_future(slowhead(args, stop)) for _ in range(args.conns)]
        probe = lambda: probe_http(args.addr, args.probe_timeout)
    else:
        tasks = []
        for _ in range(args.conns):
            tasks.append(asyncio.ensure_future(attacker(args, stats, stop)))
            await asyncio.sleep(0)  # spread the connects a little
        probe = lambda: probe_grpc(args.addr, args.probe_timeout)

    start = time.monotonic()
    probes_ok = probes = 0
    rss_peak = rss_before or 0
    while time.monotonic() - start < args.seconds:
        t0 = time.monotonic()
        ok = await probe()
        probes += 1
        probes_ok += ok
        rss = rss_mib(args.pid)
        rss_peak = max(rss_peak, rss or 0)
        print(json.dumps({"t": round(time.monotonic() - start, 1), "rss_mib": rss, "probe_ok": ok,
                          "probe_ms": round((time.monotonic() - t0) * 1000), "streams_opened": stats.opened,
                          "ended_by_server": stats.ended_by_server, "resets": stats.resets,
                          "conns_closed_by_server": stats.connections_closed}), flush=True)
        await asyncio.sleep(max(0, 1 - (time.monotonic() - t0)))
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(args.after)
    summary = {"mode": args.mode, "conns": args.conns, "streams": args.streams, "rss_before_mib": rss_before,
               "rss_peak_mib": rss_peak, "rss_after_mib": rss_mib(args.pid), "probes_ok": probes_ok, "probes": probes,
               "streams_opened": stats.opened, "ended_by_server": stats.ended_by_server, "resets": stats.resets,
               "goaways": stats.goaways}
    print("summary " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    asyncio.run(main())
