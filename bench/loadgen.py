"""A closed-loop HTTP load generator: C concurrent clients, each sending its next request when
the previous answered; prints JSON with requests/s and latency percentiles.

Run in its own process so that the client does not share the server's interpreter.
Usage: python bench/loadgen.py URL_FILE CONCURRENCY SECONDS
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx


async def client(
    urls: list[str],
    offset: int,
    stop: float,
    latencies: list[float],
    errors: list[int],
    http: httpx.AsyncClient,
) -> None:
    i = offset
    while time.perf_counter() < stop:
        url = urls[i % len(urls)]
        i += 1
        started = time.perf_counter()
        r = await http.get(url)
        latencies.append(time.perf_counter() - started)
        if r.status_code != 200:
            errors.append(r.status_code)


async def run(urls: list[str], concurrency: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        # warm-up
        await asyncio.gather(*(http.get(urls[i % len(urls)]) for i in range(concurrency)))
        stop = time.perf_counter() + seconds
        started = time.perf_counter()
        await asyncio.gather(
            *(client(urls, k * 997, stop, latencies, errors, http) for k in range(concurrency))
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
    result = asyncio.run(run(urls, int(sys.argv[2]), float(sys.argv[3])))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
