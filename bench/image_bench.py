#!/usr/bin/env python3
"""Image benchmark (not a test): build times, image sizes, boot time. Run as root from the repository root:

    sudo .venv-img/bin/python bench/image_bench.py [--skip-clean] [--json FILE]

- clean build: ``build.py build --force`` (mkosi's cache dropped: Debian is installed from scratch;
  downloaded packages still come from apt's package cache)
- rebuild after an SDK-only change: the SDK's files are touched (contents unchanged), then ``build.py``
- sizes: the raw image (apparent and allocated), the .zst
- boot: QEMU start -> the gateway's GET /health answers 200 through the forwarded port

It prints PASS or MISS beside each of issue #3's targets and exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kruxos_build import boot, description, outputs  # noqa: E402  # needs ROOT on sys.path first
from kruxos_build.paths import DEFAULT_DESCRIPTION, Layout  # noqa: E402

# Issue #3's targets: rebuild <= 25 % of a clean build, compressed image <= 150 MB, gateway ready <= 45 s.
TARGETS = {
    "rebuild_ratio": (0.25, "0.25"),
    "zst_bytes": (150_000_000, "150 MB"),
    "boot_to_health_s": (45.0, "45 s"),
}


def timed_build(*extra: str) -> float:
    """One build's own cost: what earlier steps left unwritten is flushed first (untimed), and the
    build's own writes are flushed before the clock stops. Without that, a build pays for the previous
    one's gigabyte of write-back, and the rebuild that follows a clean build looks slower than it is."""
    os.sync()
    start = time.monotonic()
    subprocess.run(
        [sys.executable, str(ROOT / "build.py"), "build", *extra], check=True, stdout=subprocess.DEVNULL
    )
    os.sync()
    return time.monotonic() - start


def touch_sdk() -> None:
    now = time.time()
    for path in (ROOT / "sdk/python/kruxos").rglob("*.py"):
        os.utime(path, (now, now))


def boot_to_health(image: Path, port: int, deadline: float = 600) -> float:
    """Polls every quarter second, each attempt with a one-second timeout: until the guest has its
    address, QEMU's user network holds a forwarded connection open while it retries the guest, and a
    longer timeout would round the measured time up by seconds."""
    with boot.running(image, guest_gateway_port=port) as vm:
        url = f"http://127.0.0.1:{vm.ports.gateway}/health"
        while time.monotonic() - vm.started < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - vm.started
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
    raise TimeoutError(f"/health did not answer within {deadline}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-clean", action="store_true", help="skip the clean (uncached) build")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    d = description.load(DEFAULT_DESCRIPTION)
    results: dict[str, float | int | str] = {"accel": "kvm" if boot.kvm_works() else "tcg"}
    if not args.skip_clean:
        results["clean_build_s"] = round(timed_build("--force"), 1)
    else:
        timed_build()  # make sure the cache and an image exist
    touch_sdk()
    results["sdk_rebuild_s"] = round(timed_build(), 1)
    if "clean_build_s" in results:
        results["rebuild_ratio"] = round(float(results["sdk_rebuild_s"]) / float(results["clean_build_s"]), 3)

    raw = Layout().out / f"{outputs.stem(d)}.raw"
    results["raw_apparent_bytes"] = raw.stat().st_size
    results["raw_allocated_bytes"] = raw.stat().st_blocks * 512
    results["zst_bytes"] = raw.with_suffix(".raw.zst").stat().st_size
    results["boot_to_health_s"] = round(boot_to_health(raw, d.gateway.port), 1)

    for key, value in results.items():
        print(f"{key:22} {value}")
    print()
    missed = 0
    for key, (limit, label) in TARGETS.items():
        if key in results:
            ok = float(results[key]) <= limit
            missed += not ok
            print(f"{key:22} {results[key]!s:>12}  target <= {label:<10} {'PASS' if ok else 'MISS'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
