"""A closed-loop HTTP/1.1 load generator: C keep-alive connections, each sending its next GET
when the previous answered; prints JSON with requests/s and latency percentiles.

Written on raw asyncio streams (with uvloop) because a general-purpose client library spends
more CPU per request than the server does, and on a 2-core machine it would measure itself
(httpx peaked near 550 requests/s at 16 connections against an empty ASGI app).
Usage: python bench/loadgen.py URL_FILE CONCURRENCY SECONDS
With ``LOADGEN_TOKEN`` set, every request carries it as a bearer token.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from urllib.parse import quote, urlsplit

import uvloop

TOKEN = os.environ.get("LOADGEN_TOKEN", "")
AUTHORIZATION = f"Authorization: Bearer {TOKEN}\r\n" if TOKEN else ""


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, target: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        host = f"{self.host}:{self.port}"
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{AUTHORIZATION}\r\n"
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        chunked = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        return status


async def client(
    conn: Connection,
    targets: list[str],
    offset: int,
    stop: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    i = offset
    while time.perf_counter() < stop:
        target = targets[i % len(targets)]
        i += 1
        started = time.perf_counter()
        status = await conn.get(target)
        latencies.append(time.perf_counter() - started)
        if status != 200:
            errors.append(status)


async def connect(host: str, port: int, targets: list[str], n: int) -> list[Connection]:
    """``n`` keep-alive connections, opened one at a time (each answers a request before the
    next is opened). Opened all at once, they queued together on the server's shared listening
    socket, and the first worker process to wake accepted the whole queue: with 2 workers the
    benchmark then measured one of them (auth-off reads on PostgreSQL at 1,875 req/s in one run,
    ~3,000 in another with the same code)."""
    conns = []
    for k in range(n):
        conn = Connection(host, port)
        await conn.get(targets[k % len(targets)])
        conns.append(conn)
        await asyncio.sleep(0.002)
    return conns


async def run(urls: list[str], concurrency: int, seconds: float) -> dict[str, float]:
    first = urlsplit(urls[0])
    host, port = first.hostname or "127.0.0.1", first.port or 80
    # Percent-encode what a request line may not carry raw (Arabic names, the '|' of tokens).
    targets = [
        quote(urlsplit(u)._replace(scheme="", netloc="").geturl(), safe="/?&=%:,+$") for u in urls
    ]
    conns = await connect(host, port, targets, concurrency)
    warm: list[float] = []
    await asyncio.gather(
        *(
            client(conn, targets, k, time.perf_counter() + 0.5, warm, [])
            for k, conn in enumerate(conns)
        )
    )
    latencies: list[float] = []
    errors: list[int] = []
    stop = time.perf_counter() + seconds
    started = time.perf_counter()
    await asyncio.gather(
        *(client(conn, targets, k * 997, stop, latencies, errors) for k, conn in enumerate(conns))
    )
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "errors": len(errors),
    }


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as fh:
        urls = [u for u in fh.read().split("\n") if u]
    result = uvloop.run(run(urls, int(sys.argv[2]), float(sys.argv[3])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
