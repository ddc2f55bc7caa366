#!/usr/bin/env python3
"""Cost of policy evaluation per invocation with 1,000 rules, as a ratio to no policy, in one run.

    .venv-sdk/bin/python bench/policy_bench.py [--quick]

Both gateways run in this process on the same database and workspace and serve the same invocation
(``filesystem.stat`` of ``/workspace``, through ``Pipeline.invoke``: input validation, policy, the
capability and the audit record; no socket, so that the policy's share is not hidden by network
time). Calls are interleaved one by one between the gateways and each is timed; the median call counts.
So drift and other load on the machine affect all alike, and a call that was preempted only moves
the tail, not the median.

Policies measured:

* ``1000 rules``: a policy an operator could grow into: 1,000 rules, of which ~20 concern the
  invoked capability (path rules with input matchers, key-specific rules) and the rest other
  capabilities (service proxies, process.run command patterns). **Target: at most 1.2x no policy.**
* ``1000 rules, all on filesystem.stat``: every rule a candidate whose input matcher must run; the
  engine merges such runs of similar rules into one test (reported for information);
* ``…, unmerged``: the same rules made unmergeable, each matcher run in turn: the true worst case
  (reported for information).

Exits 1 if the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kruxos_gateway import compose
from kruxos_gateway.config import GatewayConfig
from kruxos_gateway.core.models import InvokeParams
from kruxos_gateway.core.pipeline import Pipeline
from kruxos_gateway.core.sessions import Caller
from kruxos_gateway.policy.rules import parse_policy
from kruxos_gateway.storage.db import Database

TARGET = 1.2
WORST = "1000 rules, all on filesystem.stat"
WORST_UNMERGED = "1000 rules, all on filesystem.stat, unmerged"


def realistic_policy(n: int = 1000) -> str:
    rules = [
        "version: 1",
        "default: require_approval",
        "rules:",
        "  - {name: workspace-files, decision: allow, category: filesystem}",
    ]
    for i in range(10):  # protected paths: input matchers on the invoked capability
        rules.append(
            f"  - {{name: private-{i}, decision: deny, capability: 'filesystem.*',"
            f" inputs: {{path: {{under: /workspace/private-{i}}}}}}}"
        )
    for i in range(10):  # per-key rules on the invoked capability, for other keys
        rules.append(
            f"  - {{name: key-{i}, decision: deny, capability: filesystem.stat, keys: ['agent-{i}-*']}}"
        )
    for i in range(40):  # command patterns
        rules.append(
            f"  - {{name: cmd-{i}, decision: require_approval, capability: process.run,"
            f" inputs: {{command: {{regex: '\\btool{i}\\b'}}}}}}"
        )
    while len(rules) - 3 < n:  # the rest: rules for other capabilities (service proxies, say)
        i = len(rules)
        rules.append(
            f"  - {{name: svc-{i}, decision: require_approval, capability: svc{i % 97}.action{i},"
            f" inputs: {{target: {{glob: 'prod-{i}-*'}}}}}}"
        )
    return "\n".join(rules) + "\n"


def worst_case_policy(n: int = 1000, *, mergeable: bool = True) -> str:
    """Every rule a candidate for the invocation, each with a regex on ``path`` that does not match.

    Mergeable: the engine folds them into one regex. Not mergeable (each also has an ``unless``):
    each rule's matcher runs in turn, the true worst case.
    """
    unless = "" if mergeable else ", unless: {keys: [nobody]}"
    rules = ["version: 1", "default: allow", "rules:"]
    rules += [
        f"  - {{name: r{i}, decision: deny, capability: filesystem.stat,"
        f" inputs: {{path: {{regex: '^/workspace/never-{i}/'}}}}{unless}}}"
        for i in range(n)
    ]
    return "\n".join(rules) + "\n"


async def timed_call(pipeline: Pipeline, caller: Caller, params: InvokeParams) -> float:
    started = time.perf_counter()
    await pipeline.invoke(caller, params.name, params.inputs)
    return time.perf_counter() - started


async def measure(
    db: Database, gateways: dict[str, Pipeline], warmup: int, calls: int
) -> dict[str, list[float]]:
    """Per-call times of each gateway, calls interleaved one by one (in turn first and last)."""
    caller = Caller(key_name="bench-agent", session_id="bench")
    params = InvokeParams(name="filesystem.stat", inputs={"path": "/workspace"})
    samples: dict[str, list[float]] = {label: [] for label in gateways}
    order = list(gateways.items())
    for i in range(warmup + calls):
        for label, gateway in order:
            elapsed = await timed_call(gateway, caller, params)
            if i >= warmup:
                samples[label].append(elapsed)
        order.reverse()
        if i % 1000 == 999:
            await db.flush()  # keep the audit queue short, for all alike
    return samples


async def main(quick: bool) -> int:
    warmup, calls = (200, 2000) if quick else (1000, 20000)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "workspace").mkdir()
        (base / "state").mkdir()
        config = GatewayConfig.model_validate(
            {"state_dir": base / "state", "workspace": {"root": base / "workspace"}}
        )
        db = Database(config.db_path)
        db.start()
        try:
            # "No policy": allow everything, with no rule to look at.
            plain = compose.build(config, db, parse_policy("version: 1\ndefault: allow\n")).pipeline
            gateways = {"no policy": plain}
            for label, text in (
                ("1000 rules", realistic_policy()),
                (WORST, worst_case_policy()),
                (WORST_UNMERGED, worst_case_policy(mergeable=False)),
            ):
                policy = parse_policy(text, label)
                assert len(policy.rules) >= 1000, len(policy.rules)
                gateways[label] = compose.build(config, db, policy).pipeline
            # Each policy against "no policy", in a pass of its own: a slow policy's cache-thrashing calls
            # must not slow the others'.
            results: list[tuple[str, float, float]] = []
            for label in gateways:
                if label == "no policy":
                    continue
                n = calls if label == "1000 rules" else calls // 10
                samples = await measure(db, {"no policy": plain, label: gateways[label]}, warmup // 2, n)
                base_time = statistics.median(samples["no policy"])
                results.append((label, base_time, statistics.median(samples[label])))
        finally:
            await db.close()
    print(f"{'policy':<46} {'no policy':>10} {'with it':>10} {'ratio':>7}")
    verdict = 0
    for label, base_time, value in results:
        ratio = value / base_time
        mark = ""
        if label == "1000 rules":
            ok = ratio <= TARGET
            mark = f"  target <= {TARGET}x: {'PASS' if ok else 'MISS'}"
            verdict = 0 if ok else 1
        print(f"{label:<46} {base_time * 1e6:>7.1f} µs {value * 1e6:>7.1f} µs {ratio:>6.3f}x{mark}")
    return verdict


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    sys.exit(asyncio.run(main(parser.parse_args().quick)))
