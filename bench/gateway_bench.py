#!/usr/bin/env python3
"""Gateway + SDK throughput and latency on loopback, as ratios measured in one run.

    .venv/bin/python bench/gateway_bench.py [--quick] [--old-tree DIR]

What it runs, each server in its own process (as on the appliance, where the gateway is a daemon)
and every client in this one:

1. ``echo``      echo servers, one message in flight: the floor set by the server library. One on
                 aiohttp, the gateway's HTTP server, and one on raw websockets (the library the SDK
                 uses, and the gateway's server until issue #10), with the gateway's settings: no
                 permessage-deflate, which neither the gateway nor the SDK negotiates.
2. ``invoke x1`` a trivial invocation (``filesystem.stat`` of the workspace) through the SDK, one in
                 flight on one connection: audit logging, input validation and all.
3. ``invoke x64`` the same with 64 in flight on one connection.
4. ``100 agents`` 100 connections at once, each an agent invoking at a steady pace
                 (``AGENT_RATE`` per second, with jitter; an LLM-driven agent invokes far less
                 often), so the gateway serves ``100 * AGENT_RATE`` invocations per second; latency
                 is measured per invocation.
5. ``fair read``  one agent's ``filesystem.read`` while another agent keeps 8 slow network requests
                 and 2 writers of 200 kB persistent values going.

With ``--old-tree DIR`` (a checkout of an older commit, e.g. ``git worktree add DIR 655675e``), the
gateway of DIR runs beside this one and its invoke x1 and x64 are measured in the same rounds.

Targets (issue #2): invoke x1 >= 0.5x echo on aiohttp; invoke x64 >= 2x invoke x1; p99 with 100
agents <= 20 ms; (issue #11) p99 of the fair read <= 50 ms; (issue #10) with ``--old-tree``, invoke x1
and x64 each >= 0.9x the old gateway's.
It prints PASS or MISS beside each, and exits 1 when a target is missed.

The first rows are ratios, so they are measured interleaved: ``ROUNDS`` rounds of each echo, invoke
x1 and invoke x64 one after the other, each row adding up its rounds. A change in the machine's load
(another process, a VM) then weighs on both sides of a ratio alike instead of on whichever part
happened to run during it. Each connection is warmed up first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import websockets
from kruxos import AsyncAgent, KruxOS
from websockets.asyncio.client import ClientConnection, connect

REPO = Path(__file__).resolve().parent.parent
AGENT_RATE = 10.0  # invocations per second per agent in the 100-agent run
ROUNDS = 5  # the echoes, invoke x1 and invoke x64 are interleaved in this many rounds
PAYLOAD = '{"type":"request","id":"1","method":"ping"}'

ECHO_SERVERS = {
    "websockets": """
import asyncio
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", 0, compression=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()

asyncio.run(main())
""",
    "aiohttp": """
import asyncio
from aiohttp import WSMsgType, web

async def echo(request):
    ws = web.WebSocketResponse(compress=False)
    await ws.prepare(request)
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws

async def main():
    app = web.Application()
    app.router.add_get("/", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.Future()

asyncio.run(main())
""",
}


# Answers every request slowly: headers at once, then one body byte every 0.1 s for 3 s.
SLOW_SERVER = """
import asyncio

async def answer(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 30\\r\\nConnection: close\\r\\n\\r\\n")
        for _ in range(30):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""
NOISY_REQUESTS = 8  # slow network requests the noisy agent keeps in flight
NOISY_WRITERS = 2  # and large persistent-state writes
LARGE_VALUE = "x" * 200_000


@dataclass
class Run:
    name: str
    count: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def row(self) -> str:
        return (
            f"{self.name:<17} {self.count:>7} ops {self.rate:>9.0f}/s "
            f"p50 {self.percentile(0.50):>7.3f} ms  p99 {self.percentile(0.99):>7.3f} ms"
        )


async def timed(name: str, count: int, one: Callable[[], Awaitable[object]], in_flight: int) -> Run:
    """Run ``one`` ``count`` times with ``in_flight`` concurrent workers; time each call."""
    latencies: list[float] = []
    per_worker = count // in_flight

    async def worker() -> None:
        for _ in range(per_worker):
            started = time.perf_counter()
            await one()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return Run(name, per_worker * in_flight, time.perf_counter() - started, latencies)


def combined(runs: list[Run]) -> Run:
    """The rounds of one measurement as one row: operations and seconds added up."""
    return Run(
        runs[0].name,
        sum(r.count for r in runs),
        sum(r.seconds for r in runs),
        [latency for r in runs for latency in r.latencies],
    )


def start_process(argv: list[str], **kwargs: object) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


@dataclass
class Gateway:
    """A gateway daemon with its own state, and the keys made for it."""

    process: subprocess.Popen[str]
    host: str
    key: str
    noisy_key: str


def create_key(config: Path, name: str, env: dict[str, str]) -> str:
    """A new API key from the operator CLI, as an operator would make one."""
    argv = [sys.executable, "-m", "kruxos_gateway.ctl", "--config", str(config), "keys", "create", name]
    return subprocess.run(argv, check=True, capture_output=True, text=True, env=env).stdout.strip()


def wait_for_file(path: Path, process: subprocess.Popen[str], seconds: float = 20) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"bench: the gateway did not start (exit {process.returncode})")
        time.sleep(0.05)
    return path.read_text().strip()


@contextlib.contextmanager
def gateway(root: Path, tree: Path | None = None) -> Iterator[Gateway]:
    """A gateway in ``root``, from this checkout or, with ``tree``, from the gateway there."""
    (root / "workspace").mkdir(parents=True)
    (root / "state").mkdir()
    config = root / "gateway.yaml"
    # Everything allowed (the fairness run's slow server is on loopback, which needs
    # network.allow_addresses; the shipped policy would ask for approval of its unknown host).
    (root / "policy.yaml").write_text("version: 1\ndefault: allow\n")
    (root / "workspace" / "small.txt").write_text("a small file\n")
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: 0}}\nstate_dir: {root / 'state'}\n"
        f"workspace: {{root: {root / 'workspace'}}}\nlimits: {{max_in_flight: 64}}\n"
        f"policy: {{file: {root / 'policy.yaml'}}}\nnetwork: {{allow_addresses: [127.0.0.0/8]}}\n"
        # The 100 agents share one key: more connections than its default quota (64).
        "quotas: {connections: 128}\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree / "gateway"), env.get("PYTHONPATH", "")])
    key, noisy_key = create_key(config, "bench", env), create_key(config, "noisy", env)
    argv = [
        sys.executable,
        "-m",
        "kruxos_gateway",
        "--config",
        str(config),
        "--port-file",
        str(root / "port"),
    ]
    process = start_process(argv, env=env, stderr=subprocess.DEVNULL)
    try:
        port = wait_for_file(root / "port", process)
        yield Gateway(process, f"127.0.0.1:{port}", key, noisy_key)
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextlib.contextmanager
def server(code: str) -> Iterator[str]:
    """A server started from ``code``, which prints its port; yields that port."""
    process = start_process([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        yield process.stdout.readline().strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class Subject:
    """One thing measured in the interleaved rounds: its row's name, one operation, concurrency."""

    name: str
    one: Callable[[], Awaitable[object]]
    in_flight: int
    share: int  # operations per round, in units of n // ROUNDS


async def main(quick: bool, old_tree: Path | None) -> int:
    scale = 0.2 if quick else 1.0
    n = int(5000 * scale)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kruxos-bench-")))
        new = stack.enter_context(gateway(tmp / "new"))
        old = stack.enter_context(gateway(tmp / "old", old_tree)) if old_tree is not None else None
        echo_ports = {name: stack.enter_context(server(code)) for name, code in ECHO_SERVERS.items()}
        slow_port = stack.enter_context(server(SLOW_SERVER))
        async with contextlib.AsyncExitStack() as clients:
            subjects = []
            for name, port in echo_ports.items():
                ws = await clients.enter_async_context(connect(f"ws://127.0.0.1:{port}", compression=None))
                subjects.append(Subject(f"echo {name}", _echo(ws), 1, 1))
            gateways = [("", new)] + ([("old ", old)] if old is not None else [])
            for label, gw in gateways:
                agent = await clients.enter_async_context(KruxOS.connect_async(gw.host, api_key=gw.key))
                subjects.append(Subject(f"{label}invoke x1", _invoke(agent), 1, 1))
                subjects.append(Subject(f"{label}invoke x64", _invoke(agent), 64, 2))
            rounds = await measure(subjects, n)
        agents_run = await hundred_agents(new.host, new.key, seconds=10 * scale)
        slow_url = f"http://127.0.0.1:{slow_port}/"
        fair = await fairness(new.host, new.key, new.noisy_key, slow_url, seconds=max(4.0, 10 * scale))

    return report(rounds, agents_run, fair)


def report(rounds: dict[str, list[Run]], agents_run: Run, fair: Run) -> int:
    """Print the rows and the targets; 1 if a target is missed."""
    totals = {name: combined(runs) for name, runs in rounds.items()}
    print(
        f"aiohttp {aiohttp.__version__} (the gateway's server), websockets {websockets.version.version},"
        f" Python {sys.version.split()[0]}, loopback, 1 connection unless said, no compression;"
        f" the first {len(totals)} rows interleaved in {ROUNDS} rounds"
    )
    for run in (*totals.values(), agents_run, fair):
        print(run.row())

    def per_round(label: str, top: str, bottom: str) -> None:
        # Not the targets (those are the totals), but shows whether one disturbed round skewed them.
        ratios = (t.rate / b.rate for t, b in zip(rounds[top], rounds[bottom], strict=True))
        print(f"per round: {label:<20}", " ".join(f"{r:.2f}" for r in ratios))

    per_round("x1 / echo aiohttp", "invoke x1", "echo aiohttp")
    per_round("x64 / x1", "invoke x64", "invoke x1")
    old = "old invoke x1" in rounds
    if old:
        per_round("x1 new / old", "invoke x1", "old invoke x1")
        per_round("x64 new / old", "invoke x64", "old invoke x64")
    print()

    def rate(name: str) -> float:
        return totals[name].rate

    print(f"{'echo aiohttp / echo websockets':<44} {rate('echo aiohttp') / rate('echo websockets'):>8.2f}")
    print(f"{'invoke x1 / echo websockets':<44} {rate('invoke x1') / rate('echo websockets'):>8.2f}")
    checks = [
        ("invoke x1 / echo aiohttp", rate("invoke x1") / rate("echo aiohttp"), ">=", 0.5),
        ("invoke x64 / invoke x1", rate("invoke x64") / rate("invoke x1"), ">=", 2.0),
        (f"p99 ms, 100 agents at {AGENT_RATE:g}/s each", agents_run.percentile(0.99), "<=", 20.0),
        ("p99 ms, one agent's read beside a noisy one", fair.percentile(0.99), "<=", 50.0),
    ]
    if old:
        checks += [
            ("invoke x1 new / old", rate("invoke x1") / rate("old invoke x1"), ">=", 0.9),
            ("invoke x64 new / old", rate("invoke x64") / rate("old invoke x64"), ">=", 0.9),
        ]
    missed = 0
    for label, value, op, target in checks:
        ok = value >= target if op == ">=" else value <= target
        missed += not ok
        print(f"{label:<44} {value:>8.2f}  target {op} {target:<5g} {'PASS' if ok else 'MISS'}")
    return 1 if missed else 0


def _echo(ws: ClientConnection) -> Callable[[], Awaitable[object]]:
    async def once() -> None:
        await ws.send(PAYLOAD)
        await ws.recv()

    return once


def _invoke(agent: AsyncAgent) -> Callable[[], Awaitable[object]]:
    async def once() -> None:
        await agent.capabilities.invoke("filesystem.stat", path="/workspace")

    return once


async def measure(subjects: list[Subject], n: int) -> dict[str, list[Run]]:
    """Warm each subject up, then run ``ROUNDS`` rounds of all of them, one after the other."""
    for s in subjects:
        await timed("warm-up", 256 if s.in_flight > 1 else 200, s.one, s.in_flight)
    rounds: dict[str, list[Run]] = {s.name: [] for s in subjects}
    for _ in range(ROUNDS):
        for s in subjects:
            rounds[s.name].append(await timed(s.name, n * s.share // ROUNDS, s.one, s.in_flight))
    return rounds


async def fairness(host: str, key: str, noisy_key: str, slow_url: str, seconds: float) -> Run:
    """One agent's ``filesystem.read`` while another keeps slow network requests and large state
    writes going (issue #11: they used to share one small thread pool and the database thread)."""
    latencies: list[float] = []
    async with (
        KruxOS.connect_async(host, api_key=key) as victim,
        KruxOS.connect_async(host, api_key=noisy_key) as noisy,
    ):
        deadline = time.perf_counter() + seconds

        async def slow_requests() -> None:
            while time.perf_counter() < deadline:
                await noisy.capabilities.invoke("network.http_request", url=slow_url, timeout=10)

        async def large_writes(n: int) -> None:
            while time.perf_counter() < deadline:
                await noisy.state.persistent.set(f"bench.large.{n}", LARGE_VALUE)

        async def reads() -> None:
            await asyncio.sleep(0.5)  # the noise first
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await victim.capabilities.invoke("filesystem.read", path="/workspace/small.txt")
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.01)

        started = time.perf_counter()
        await asyncio.gather(
            *(slow_requests() for _ in range(NOISY_REQUESTS)),
            *(large_writes(n) for n in range(NOISY_WRITERS)),
            reads(),
        )
    return Run("fair read", len(latencies), time.perf_counter() - started, latencies)


async def hundred_agents(host: str, key: str, seconds: float, agents: int = 100) -> Run:
    """``agents`` connections at once, each invoking at AGENT_RATE per second (with jitter)."""
    latencies: list[float] = []
    connections = [await KruxOS.connect_async(host, api_key=key) for _ in range(agents)]
    interval = 1 / AGENT_RATE
    started = time.perf_counter()
    deadline = started + seconds

    async def agent_loop(agent: AsyncAgent) -> None:
        await asyncio.sleep(random.uniform(0, interval))
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await agent.capabilities.invoke("filesystem.stat", path="/workspace")
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, interval * random.uniform(0.5, 1.5) - (time.perf_counter() - t0)))

    try:
        await asyncio.gather(*(agent_loop(a) for a in connections))
    finally:
        await asyncio.gather(*(a.disconnect() for a in connections))
    return Run(f"{agents} agents", len(latencies), time.perf_counter() - started, latencies)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the work, for a smoke run")
    parser.add_argument(
        "--old-tree", type=Path, help="also measure the gateway of this checkout (e.g. a git worktree)"
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.quick, args.old_tree)))
