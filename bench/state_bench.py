#!/usr/bin/env python3
"""Agent-state throughput and watch latency, as ratios measured in one run.

    .venv-sdk/bin/python bench/state_bench.py [--quick]

What it runs (the gateway in its own process, as on the appliance; every client in this one):

1. ``raw sqlite``  one writer doing INSERT + COMMIT in a loop on a WAL database with
                   ``synchronous=FULL``, in the same directory as the gateway's database (same disk):
                   the cost of one durable commit.
2. ``persistent x1``  one agent doing ``state.persistent.set`` in a loop (each acknowledged write is
                   committed and fsynced before the answer).
3. ``persistent x20``  twenty agents doing the same at once: the gateway's group commit lets them
                   share fsyncs.
4. ``watch latency``  one agent watches a prefix, another sets keys under it, one at a time; the
                   time from calling ``set`` to the callback running, per change.

Targets (issue #5): persistent x20 >= 1x raw sqlite; watch p99 <= 10 ms. It prints PASS or MISS
beside each and exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kruxos import AsyncAgent, KruxOS, StateChange

ROUNDS = 3


def raw_sqlite_rate(path: Path, count: int) -> tuple[float, list[float]]:
    """Durable commits per second (one row per transaction, WAL, synchronous=FULL), and each one's ms."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT, value TEXT)")
    latencies = []
    started = time.perf_counter()
    for n in range(count):
        before = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (key, value) VALUES (?, ?)", (f"k{n % 10}", str(n)))
        conn.execute("COMMIT")
        latencies.append((time.perf_counter() - before) * 1000)
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed, latencies


async def persistent_rate(host: str, key: str, agents: int, per_agent: int) -> float:
    connected: list[AsyncAgent] = [await KruxOS.connect_async(host, api_key=key) for _ in range(agents)]
    try:

        async def writer(n: int, agent: AsyncAgent) -> None:
            for value in range(per_agent):
                await agent.state.persistent.set(f"bench.{n}", value)

        started = time.perf_counter()
        await asyncio.gather(*(writer(n, a) for n, a in enumerate(connected)))
        return agents * per_agent / (time.perf_counter() - started)
    finally:
        for agent in connected:
            await agent.disconnect()


async def watch_latencies(host: str, key: str, count: int) -> tuple[list[float], list[float]]:
    """Per change: ms from calling ``set`` to the callback, and from ``set`` returning to the callback."""
    async with (
        KruxOS.connect_async(host, api_key=key) as watcher,
        KruxOS.connect_async(host, api_key=key) as writer,
    ):
        arrived: asyncio.Queue[float] = asyncio.Queue()

        def on_change(change: StateChange) -> None:
            arrived.put_nowait(time.perf_counter())

        await watcher.state.shared.watch(prefix="latency.", callback=on_change)
        from_call, from_ack = [], []
        for n in range(count):
            sent = time.perf_counter()
            await writer.state.shared.set("latency.k", n)
            acknowledged = time.perf_counter()
            called = await asyncio.wait_for(arrived.get(), 10)
            from_call.append((called - sent) * 1000)
            from_ack.append(max(0.0, called - acknowledged) * 1000)
        return from_call, from_ack


async def tmpfs_watch_latencies(count: int) -> list[float] | None:
    """Watch latency with the database on a tmpfs (fsync is free): the notification path alone."""
    shm = Path("/dev/shm")
    if not os.path.isdir(shm):  # noqa: ASYNC240 - one stat before the run, not on a hot path
        return None
    with tempfile.TemporaryDirectory(prefix="kruxos-state-bench-", dir=shm) as tmp:
        gateway, host, key = start_gateway(Path(tmp))
        try:
            return (await watch_latencies(host, key, count))[0]
        finally:
            gateway.terminate()
            gateway.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_for_file(path: Path, process: subprocess.Popen[bytes], seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the gateway did not start")
        time.sleep(0.02)
    return path.read_text().strip()


def start_gateway(root: Path, state: Path | None = None) -> tuple[subprocess.Popen[bytes], str, str]:
    """The gateway as a daemon on 127.0.0.1, port 0, files under ``root``: (process, address, key)."""
    state = state or root / "state"
    (root / "workspace").mkdir()
    state.mkdir(exist_ok=True)
    config = root / "gateway.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: 0}}\nstate_dir: {state}\n"
        f"workspace: {{root: {root / 'workspace'}}}\n"
    )
    key = subprocess.run(
        [sys.executable, "-m", "kruxos_gateway.ctl", "--config", str(config), "keys", "create", "bench"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    gateway = subprocess.Popen(
        [sys.executable, "-m", "kruxos_gateway", "--config", str(config), "--port-file", str(root / "port")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return gateway, f"127.0.0.1:{wait_for_file(root / 'port', gateway)}", key


async def main(quick: bool) -> int:
    writes = 200 if quick else 1000
    per_agent = 20 if quick else 100
    changes = 200 if quick else 1000
    # In the current directory, not /tmp: on many systems /tmp is a tmpfs, where fsync costs nothing.
    with tempfile.TemporaryDirectory(prefix="kruxos-state-bench-", dir=Path.cwd()) as tmp:
        root = Path(tmp)
        gateway, host, key = start_gateway(root)
        try:
            # The disk's fsync time drifts within seconds: interleave the runs and keep the medians.
            raws: list[float] = []
            ones: list[float] = []
            twenties: list[float] = []
            commits: list[float] = []
            for _ in range(ROUNDS):
                raw, latencies = raw_sqlite_rate(root / "state" / f"raw{len(raws)}.db", writes)
                raws.append(raw)
                commits.extend(latencies)
                ones.append(await persistent_rate(host, key, 1, writes))
                twenties.append(await persistent_rate(host, key, 20, per_agent))
            latencies, after_ack = await watch_latencies(host, key, changes)
        finally:
            gateway.terminate()
            gateway.wait()
    raw, one, twenty = statistics.median(raws), statistics.median(ones), statistics.median(twenties)
    in_memory = await tmpfs_watch_latencies(changes)

    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    ok_twenty, ok_watch = twenty >= raw, p99 <= 10.0
    print(f"medians of {ROUNDS} interleaved rounds")
    print(
        f"raw sqlite (WAL, synchronous=FULL)  {raw:9.0f} commits/s"
        f"   commit p50 {percentile(commits, 0.5):5.2f} ms  p99 {percentile(commits, 0.99):5.2f} ms"
    )
    print(f"persistent.set, 1 agent             {one:9.0f} writes/s   {one / raw:5.2f}x raw")
    print(
        f"persistent.set, 20 agents           {twenty:9.0f} writes/s   {twenty / raw:5.2f}x raw"
        f"   target >= 1x: {'PASS' if ok_twenty else 'MISS'}"
    )
    print(
        f"shared watch latency set->callback  p50 {p50:5.2f} ms  p99 {p99:5.2f} ms"
        f"   target p99 <= 10 ms: {'PASS' if ok_watch else 'MISS'}"
    )
    print(
        f"  callback after set's answer         p50 {percentile(after_ack, 0.5):5.2f} ms"
        f"  p99 {percentile(after_ack, 0.99):5.2f} ms   (0: the event arrived before the answer)"
    )
    if in_memory is not None:
        print(
            f"  same, database on tmpfs (no fsync)  p50 {percentile(in_memory, 0.5):5.2f} ms"
            f"  p99 {percentile(in_memory, 0.99):5.2f} ms   (the notification path without the disk)"
        )
    return 0 if ok_twenty and ok_watch else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
