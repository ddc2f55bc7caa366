#!/usr/bin/env python3
"""What a file worker costs: ``filesystem.stat`` and a 1 MiB read, in the gateway vs in a worker.

    sudo .venv/bin/python bench/file_worker_bench.py [--quick]

Builds one gateway twice on a scratch workspace: without per-key uids (file work in the gateway's
threads) and with them (``process.key_uid_base``: file work in a worker process of the key's uid,
docs/gateway.md, *Where file work runs*), and times the file work itself (``Parts.files.run``, as
the handlers call it), without the WebSocket around it. Needs root, to start the worker as another
uid; prints the median and the 90th percentile of each.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import grp
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kruxos_gateway import compose
from kruxos_gateway.capabilities.process import resolve_run_as
from kruxos_gateway.config import GatewayConfig
from kruxos_gateway.policy.rules import parse_policy
from kruxos_gateway.storage import store
from kruxos_gateway.storage.db import Database

GROUP = "nogroup"


async def timed(call: Callable[[], Awaitable[Any]], count: int) -> tuple[float, float]:
    for _ in range(count // 10):  # warm up (and start the worker)
        await call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1e6)
    return statistics.median(samples), statistics.quantiles(samples, n=10)[-1]


async def measure(root: Path, keyed: bool, count: int) -> dict[str, tuple[float, float]]:
    process = {"run_as_user": "nobody", "run_as_group": GROUP, "key_uid_base": 200_000} if keyed else {}
    config = GatewayConfig.model_validate(
        {
            "state_dir": root / ("state-keyed" if keyed else "state"),
            "workspace": {"root": root / "workspace"},
            "process": process,
        }
    )
    db = Database(config.db_path)
    db.start()
    try:
        await db.run(functools.partial(store.create_key, name="bench", take_over=True))
        run_as = resolve_run_as(config.process) if keyed else None
        parts = compose.build(config, db, parse_policy("version: 1\ndefault: allow\n"), run_as=run_as)
        ctx = parts.pipeline.context("bench", "session", "invocation")
        read = {"path": "big.bin", "max_bytes": 10 << 20}
        try:
            return {
                "stat": await timed(lambda: parts.files.run(ctx, "stat", {"path": "small.txt"}), count),
                "read 1 MiB": await timed(lambda: parts.files.run(ctx, "read", read), count // 10),
            }
        finally:
            await parts.close()
    finally:
        await db.close()


def main(count: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="kruxos-file-bench-"))
    try:
        root.chmod(0o755)
        (root / "state").mkdir(mode=0o700)
        (root / "state-keyed").mkdir(mode=0o700)
        workspace = root / "workspace"
        workspace.mkdir()
        os.chown(workspace, 0, grp.getgrnam(GROUP).gr_gid)
        workspace.chmod(0o2770)
        (workspace / "small.txt").write_text("hello\n")
        (workspace / "big.bin").write_bytes(os.urandom(1 << 20))
        results = {
            mode: asyncio.run(measure(root, mode == "worker", count)) for mode in ("in-process", "worker")
        }
    finally:
        shutil.rmtree(root)
    print(f"{'':12}{'in-process':>24}{'worker':>24}   (median / p90, µs)")
    for what in results["in-process"]:
        row = "".join(f"{m:>12.1f} /{p:>9.1f}" for m, p in (results[mode][what] for mode in results))
        print(f"{what:12}{row}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("file_worker_bench: needs root, to start the worker as another uid")
    main(500 if args.quick else 5000)
