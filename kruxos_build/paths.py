"""Where the builder reads and writes, relative to the repository root."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DESCRIPTION = ROOT / "appliance.yaml"
DEFAULT_CACHE = Path("/var/cache/kruxos-build")


@dataclass(frozen=True)
class Layout:
    """The builder's directories. ``cache`` lives outside the clone so fresh clones reuse it."""

    root: Path = ROOT

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def generated(self) -> Path:
        return self.build / "generated"

    @property
    def mkosi_out(self) -> Path:
        """mkosi's own output directory (raw image, manifest, UKI, ...)."""
        return self.build / "mkosi.output"

    @property
    def out(self) -> Path:
        """The deliverables: image, .zst, .bmap, SHA256SUMS, manifest."""
        return self.build / "out"

    @property
    def ssh_key(self) -> Path:
        """The dev profile's build-generated SSH key, used by ``build.py boot`` and the image tests."""
        return self.build / "ssh" / "id_ed25519"

    @property
    def cache(self) -> Path:
        return Path(os.environ.get("KRUXOS_BUILD_CACHE", DEFAULT_CACHE))
