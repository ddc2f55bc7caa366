"""Running mkosi on the rendered configuration: ``summary`` as a cheap check, then ``build``.

**The initrd is built only when what it is made from changed.** mkosi builds every subimage
(``mkosi.images/initrd``) on every run, although a change to the SDK, the gateway or the overlay never
touches the initrd: that is seconds of every rebuild. So ``build`` asks mkosi for the main image alone
(``--dependency=``, an empty list) when the initrd from the last build is still there and its key,
made from the initrd's configuration as mkosi resolved it (its part of ``mkosi summary``) and the files
under ``mkosi.images/``, is unchanged. ``--force`` always rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Literal

from .build_workspace import ENV as WORKSPACE_ENV
from .build_workspace import MKOSI_DEFAULT, Workspace
from .build_workspace import prepare as prepare_workspace
from .errors import BuildError
from .paths import Layout

Profile = Literal["dev", "release"]


def _mkosi() -> str:
    mkosi = shutil.which("mkosi")
    if mkosi is None:
        raise BuildError("mkosi is not installed", hint="run ./build.py as root: it installs the build tools")
    return mkosi


def _command(layout: Layout, profile: Profile) -> list[str]:
    """mkosi on the repository's configuration with one of its profiles (``mkosi.profiles/``).

    The profile is given on the command line: mkosi 24.3 reads profiles only after the top-level
    ``mkosi.conf`` (a ``Profile=`` in our generated drop-in would come too late), 25.3 after
    ``mkosi.conf.d``; ``--profile=NAME`` means the same to both."""
    return [_mkosi(), "-C", str(layout.root), f"--profile={profile}"]


def summary(layout: Layout, profile: Profile) -> str:
    """``mkosi summary`` of the merged config; fails if mkosi rejects it."""
    result = subprocess.run(
        [*_command(layout, profile), "summary"],
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


INITRD_OUTPUT = "initrd.cpio.zst"
"""The initrd subimage's output in mkosi's output directory (Initrds= in overlay/mkosi.conf.j2)."""


def initrd_key(layout: Layout, summary_text: str) -> str:
    """What the initrd is made from: its section of ``mkosi summary`` and the files of ``mkosi.images/``."""
    digest = hashlib.sha256()
    sections = summary_text.split("IMAGE: ")
    initrd = "".join(s for s in sections if s.startswith("initrd\n"))
    # Seed: repart's random seed, drawn anew by every mkosi run (not an input of the initrd).
    digest.update(
        "\n".join(line for line in initrd.splitlines() if line.split(":")[0].strip() != "Seed").encode()
    )
    images = layout.root / "mkosi.images"
    for path in sorted(images.rglob("*")) if images.is_dir() else []:
        digest.update(b"\0" + str(path.relative_to(images)).encode() + b"\0")
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _initrd_stamp(layout: Layout) -> Path:
    return layout.mkosi_out / f"{INITRD_OUTPUT}.key"


def initrd_up_to_date(layout: Layout, key: str) -> bool:
    """Whether the initrd from the last build is there and was made from what ``key`` describes."""
    stamp = _initrd_stamp(layout)
    try:
        return (layout.mkosi_out / INITRD_OUTPUT).is_file() and stamp.read_text().strip() == key
    except OSError:
        return False


def build(
    layout: Layout,
    profile: Profile,
    *,
    log: Path,
    force: bool = False,
    initrd: str | None = None,
    workspace: Workspace = MKOSI_DEFAULT,
) -> bool:
    """``mkosi build`` in ``workspace``, its output to ``log``. ``initrd`` is the initrd's key
    (:func:`initrd_key`): when the last build's initrd has that key, only the main image is built.
    Returns whether the initrd was built."""
    if os.geteuid() != 0:
        raise BuildError(
            "building the image needs root (mkosi installs packages into the image tree)",
            hint="sudo ./build.py",
        )
    layout.cache.mkdir(parents=True, exist_ok=True)
    layout.mkosi_out.mkdir(parents=True, exist_ok=True)
    command = [*_command(layout, profile), "--force"]
    if workspace.path is not None:
        prepare_workspace(workspace)
        command.append(f"--workspace-dir={workspace.path}")  # 25.x: also --workspace-directory
    if force:
        command.append("--force")  # twice: also drop the incremental cache
    build_initrd = force or initrd is None or not initrd_up_to_date(layout, initrd)
    if not build_initrd:
        command.append("--dependency=")  # no subimages: the initrd is reused
    else:
        _initrd_stamp(layout).unlink(missing_ok=True)
    command.append("build")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False
        )
    if result.returncode != 0:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        hint = f"full log: {log}"
        if workspace.in_memory:
            hint += (
                f"; if {workspace.path} ran out of space, build on disk: {WORKSPACE_ENV}=/var/tmp ./build.py"
            )
        raise BuildError(f"mkosi build failed: {tail[0] if tail else 'no output'}", hint=hint)
    if build_initrd and initrd is not None:
        _initrd_stamp(layout).write_text(initrd + "\n")
    return build_initrd


def reused_cache(log: Path) -> bool:
    """Whether the build in ``log`` reused the incremental cache (mkosi says when it does not)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False
    return "not reusing cached images" not in text and "Installing Debian" not in text
