"""``build.py`` commands: build (default), render, boot, clean. Each stage is shown with its duration."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import boot, build_workspace, description, host, mkosi, outputs, render
from .errors import BuildError, error_line
from .paths import DEFAULT_DESCRIPTION, Layout


class Stages:
    """Prints each stage as it starts and ends, with how long it took."""

    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []

    @contextmanager
    def __call__(self, title: str) -> Iterator[None]:
        print(f"==> {title} ...", flush=True)
        start = time.monotonic()
        yield
        elapsed = time.monotonic() - start
        self.timings.append((title, elapsed))
        print(f"    {title}: done in {elapsed:.1f}s", flush=True)

    def report(self) -> None:
        total = sum(t for _, t in self.timings)
        print(f"==> total {total:.1f}s (" + ", ".join(f"{n} {t:.1f}s" for n, t in self.timings) + ")")


def _parser() -> argparse.ArgumentParser:
    # The common options work before and after the command: ./build.py --description F render, or
    # ./build.py render --description F. In the subcommands they default to "unset" so as not to override.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--description",
        type=Path,
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="appliance description (default: appliance.yaml)",
    )
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    parser = argparse.ArgumentParser(
        prog="build.py",
        parents=[common],
        description="Build the KruxOS appliance disk image (see docs/image.md).",
        epilog=(
            "environment: KRUXOS_BUILD_CACHE=DIR moves mkosi's cache (default /var/cache/kruxos-build); "
            "KRUXOS_BUILD_WORKSPACE=DIR is where mkosi works (default: /dev/shm when the machine has "
            "3 GiB to spare, else /var/tmp)"
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    build = commands.add_parser("build", parents=[common], help="build the image (the default)")
    build.add_argument(
        "--force", action="store_true", help="drop mkosi's incremental cache and reinstall the distribution"
    )
    commands.add_parser(
        "render", parents=[common], help="render build/generated and check it with mkosi summary"
    )
    boot_cmd = commands.add_parser(
        "boot", parents=[common], help="boot the built image in QEMU (serial console here)"
    )
    boot_cmd.add_argument("--image", type=Path, help="raw image (default: the one build/out holds)")
    clean = commands.add_parser(
        "clean",
        parents=[common],
        help="remove build/ outputs and an interrupted build's leftovers (keeps the cache, the SSH key)",
    )
    clean.add_argument("--all", action="store_true", help="also remove the incremental cache and build/ssh")
    return parser


def _load(path: Path, stage: Stages) -> description.Description:
    with stage("description"):
        d = description.load(path)
        print(f"    {path}: {d.name} {d.version}, Debian {d.debian.release}, profile {d.profile}")
    return d


def cmd_render(args: argparse.Namespace, layout: Layout, stage: Stages) -> int:
    d = _load(args.description, stage)
    with stage("render"):
        rendered = render.render(d, args.description.resolve(), layout)
    with stage("mkosi summary"):
        (layout.build / "mkosi-summary.txt").write_text(mkosi.summary(layout, d.profile))
    stage.report()
    print(f"rendered: {rendered.generated}\nsummary:  {layout.build / 'mkosi-summary.txt'}")
    return 0


def cmd_build(args: argparse.Namespace, layout: Layout, stage: Stages) -> int:
    d = _load(args.description, stage)
    with stage("host tools"):
        installed = host.ensure()
        print(f"    installed: {' '.join(installed)}" if installed else "    all present")
    with stage("render"):
        rendered = render.render(d, args.description.resolve(), layout)
        staged = ", ".join(rendered.staged) or "nothing (no SDK or gateway sources yet)"
        print(f"    staged: {staged}")
    with stage("mkosi summary"):
        summary = mkosi.summary(layout, d.profile)
        (layout.build / "mkosi-summary.txt").write_text(summary)
    log = layout.build / "mkosi.log"
    print(f"    mkosi's log: {log}; incremental cache: {layout.cache}")
    with stage("mkosi build"):
        place = build_workspace.choose()
        print(f"    workspace: {place.describe()}")
        initrd = mkosi.initrd_key(layout, summary)
        if not mkosi.build(layout, d.profile, log=log, force=args.force, initrd=initrd, workspace=place):
            print("    reused the initrd of the last build (its configuration is unchanged)")
        if mkosi.reused_cache(log):
            print("    reused the cached Debian installation (only the trees and scripts ran)")
        else:
            print("    installed Debian afresh (no cache, or its package list, release or mirror changed)")
    result = outputs.make(d, rendered, layout, stage=stage)
    stage.report()
    print("outputs:")
    for path in result.all():
        print(f"  {path}")
    return 0


def cmd_boot(args: argparse.Namespace, layout: Layout, stage: Stages) -> int:
    d = description.load(args.description)
    image = args.image or layout.out / f"{outputs.stem(d)}.raw"
    if not image.exists():
        raise BuildError(f"no image at {image}", hint="build it first: ./build.py")
    host.ensure(boot_only=True)
    return boot.interactive(image, guest_gateway_port=d.gateway.port)


def cmd_clean(args: argparse.Namespace, layout: Layout, stage: Stages) -> int:
    doomed = [
        layout.generated,
        layout.out,
        layout.mkosi_out,
        layout.build / "mkosi.log",
        layout.build / "mkosi-summary.txt",
        # What an interrupted build left in memory (mkosi removes its workspace when it ends).
        build_workspace.MEMORY_WORKSPACE,
    ]
    if args.all:
        doomed += [layout.cache, layout.ssh_key.parent]
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
            print(f"removed {path}/")
        elif path.exists():
            path.unlink()
            print(f"removed {path}")
    return 0


COMMANDS = {"build": cmd_build, "render": cmd_render, "boot": cmd_boot, "clean": cmd_clean}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    for name, default in (("description", DEFAULT_DESCRIPTION), ("debug", False), ("force", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    layout = Layout()
    try:
        return COMMANDS[args.command or "build"](args, layout, Stages())
    except BuildError as e:
        if args.debug:
            raise
        print(error_line("build.py", e.message, e.hint), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("build.py: interrupted", file=sys.stderr)
        return 130
