"""Running mkosi on the rendered configuration: ``summary`` as a cheap check, then ``build``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .errors import BuildError
from .paths import Layout


def _mkosi() -> str:
    mkosi = shutil.which("mkosi")
    if mkosi is None:
        raise BuildError("mkosi is not installed", hint="run ./build.py as root: it installs the build tools")
    return mkosi


def summary(layout: Layout) -> str:
    """``mkosi summary`` of the merged config; fails if mkosi rejects it."""
    result = subprocess.run(
        [_mkosi(), "-C", str(layout.root), "summary"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BuildError(
            f"mkosi summary rejected the generated config: {last}",
            hint=f"check {layout.generated / 'mkosi.conf'} and mkosi.conf",
        )
    return result.stdout


def build(layout: Layout, *, log: Path, force: bool = False) -> None:
    """``mkosi build``, its output to ``log`` (and the terminal when verbose)."""
    if os.geteuid() != 0:
        raise BuildError(
            "building the image needs root (mkosi installs packages into the image tree)",
            hint="sudo ./build.py",
        )
    layout.cache.mkdir(parents=True, exist_ok=True)
    layout.mkosi_out.mkdir(parents=True, exist_ok=True)
    command = [_mkosi(), "-C", str(layout.root), "--force"]
    if force:
        command.append("--force")  # twice: also drop the incremental cache
    command.append("build")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        )
    if result.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise BuildError(f"mkosi build failed: {tail[0] if tail else 'no output'}", hint=f"full log: {log}")


def reused_cache(log: Path) -> bool:
    """Whether the build in ``log`` reused the incremental cache (mkosi says when it does not)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return "not reusing cached images" not in text and "Installing Debian" not in text
