"""The deliverables in build/out/: raw disk image, .raw.zst, .bmap, JSON manifest, SHA256SUMS."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .description import Description
from .errors import BuildError
from .paths import Layout
from .render import Rendered


@dataclass(frozen=True)
class Outputs:
    raw: Path
    zst: Path
    bmap: Path
    manifest: Path
    sums: Path

    def all(self) -> tuple[Path, ...]:
        return (self.raw, self.zst, self.bmap, self.manifest, self.sums)


def stem(description: Description) -> str:
    """mkosi's output name: ImageId_ImageVersion."""
    return f"kruxos_{description.version}"


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BuildError(f"{what} failed: {last}", hint=" ".join(command))


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def git_commit(root: Path) -> str | None:
    """HEAD's commit, with "-dirty" when the tree has uncommitted changes; None outside git."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}-dirty" if dirty else head


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def packages(mkosi_manifest: Path) -> list[dict[str, str]]:
    """Every package with its version, from mkosi's JSON manifest (ManifestFormat=json)."""
    try:
        data: dict[str, Any] = json.loads(mkosi_manifest.read_text())
    except (OSError, ValueError) as e:
        raise BuildError(f"cannot read mkosi's manifest {mkosi_manifest}: {e}") from None
    return sorted(
        (
            {"name": p["name"], "version": p["version"], "architecture": p.get("architecture", "")}
            for p in data.get("packages", [])
        ),
        key=lambda p: p["name"],
    )


Stage = Callable[[str], AbstractContextManager[None]]


def _untimed(title: str) -> AbstractContextManager[None]:
    return contextlib.nullcontext()


def make(description: Description, rendered: Rendered, layout: Layout, stage: Stage = _untimed) -> Outputs:
    """Collect mkosi's image into build/out and make the rest next to it, each step timed by ``stage``."""
    name = stem(description)
    source = layout.mkosi_out / f"{name}.raw"
    if not source.exists():
        raise BuildError(f"mkosi did not produce {source}", hint="see build/mkosi.log")
    out = layout.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    outputs = Outputs(
        raw=out / f"{name}.raw",
        zst=out / f"{name}.raw.zst",
        bmap=out / f"{name}.bmap",
        manifest=out / f"{name}.manifest.json",
        sums=out / "SHA256SUMS",
    )

    _link_or_copy(source, outputs.raw)
    with stage("bmap"):
        _run(["bmaptool", "create", "-o", str(outputs.bmap), str(outputs.raw)], "bmaptool create")
    with stage("compress (zstd)"):
        _run(
            ["zstd", "-q", "-T0", "-6", "--force", "--sparse", "-o", str(outputs.zst), str(outputs.raw)],
            "zstd",
        )
    with stage("manifest + SHA256SUMS"):
        manifest = {
            "name": description.name,
            "appliance_version": description.version,
            "profile": description.profile,
            "debian_release": description.debian.release,
            "git_commit": git_commit(layout.root),
            "built_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "sdk_version": rendered.sdk_version,
            "gateway_version": rendered.gateway_version,
            "staged": list(rendered.staged),
            "image": {
                "file": outputs.raw.name,
                "apparent_bytes": outputs.raw.stat().st_size,
                "allocated_bytes": outputs.raw.stat().st_blocks * 512,
                "compressed_bytes": outputs.zst.stat().st_size,
            },
            "packages": packages(layout.mkosi_out / f"{name}.manifest"),
        }
        outputs.manifest.write_text(json.dumps(manifest, indent=2) + "\n")
        lines = [
            f"{_sha256(p)}  {p.name}\n" for p in (outputs.raw, outputs.zst, outputs.bmap, outputs.manifest)
        ]
        outputs.sums.write_text("".join(lines))
    return outputs
