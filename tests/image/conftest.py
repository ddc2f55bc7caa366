"""Fixtures of the booted-image tests: one image build and one boot per session (see image_support)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kruxos_build import boot, description, outputs
from kruxos_build.paths import DEFAULT_DESCRIPTION, Layout

from .image_support import BOOT_DEADLINE, ROOT, Booted, Host, ssh_config_for, timeout

with warnings.catch_warnings():
    # paramiko (through testinfra) imports cryptography's deprecated ciphers; not ours to fix
    warnings.simplefilter("ignore", DeprecationWarning)
    import testinfra  # type: ignore[import-untyped]  # ships no type information


@pytest.fixture(scope="session")
def appliance() -> description.Description:
    return description.load(DEFAULT_DESCRIPTION)


@pytest.fixture(scope="session")
def image(appliance: description.Description, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dev image: $KRUXOS_TEST_IMAGE, or built now with ./build.py (incremental, cached)."""
    if given := os.environ.get("KRUXOS_TEST_IMAGE"):
        return Path(given)
    if os.geteuid() != 0:
        pytest.fail("building the image needs root: run the image tests as root, or set KRUXOS_TEST_IMAGE")
    _build("build")
    return _keep(Layout().out / f"{outputs.stem(appliance)}.raw", tmp_path_factory.mktemp("dev-image"))


def _keep(raw: Path, directory: Path) -> Path:
    """A hard link to ``raw`` that a later build (which replaces build/out) leaves alone."""
    kept = directory / raw.name
    os.link(raw, kept)
    return kept


def _build(*args: str) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "build.py"), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"./build.py {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


ROOT_PARTITION_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"  # x86-64 root (Discoverable Partitions Spec)


def extract_root(raw: Path, directory: Path, paths: tuple[str, ...]) -> Path:
    """Copy ``paths`` out of the image's root file system into ``directory``, without mounting anything."""
    table = json.loads(
        subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True, check=True).stdout
    )["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    part = next(p for p in table["partitions"] if p["type"].upper() == ROOT_PARTITION_TYPE)
    fs = directory / "root.ext4"
    subprocess.run(
        [
            "dd",
            f"if={raw}",
            f"of={fs}",
            "bs=4M",
            "iflag=skip_bytes,count_bytes",
            f"skip={part['start'] * sector}",
            f"count={part['size'] * sector}",
            "status=none",
        ],
        check=True,
    )
    tree = directory / "tree"
    for path in paths:
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["debugfs", "-R", f"rdump {path} {target.parent}", str(fs)], capture_output=True, check=True
        )
    fs.unlink()
    return tree


@pytest.fixture(scope="session")
def release_tree(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Files of the release variant: built with an operator key (reusing the cache), read from the image.

    build/out holds the release image meanwhile; the dev image is rebuilt afterwards (both are cached
    builds of about half a minute).
    """
    if os.environ.get("KRUXOS_TEST_IMAGE") or os.geteuid() != 0:
        pytest.skip("building the release variant needs root and a build (KRUXOS_TEST_IMAGE is set)")
    work = tmp_path_factory.mktemp("release")
    key = work / "operator"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@test", "-f", str(key)], check=True
    )
    data = yaml.safe_load(DEFAULT_DESCRIPTION.read_text())
    data.update(profile="release", ssh_keys=[key.with_suffix(".pub").read_text().strip()])
    release = work / "release.yaml"
    release.write_text(yaml.safe_dump(data))
    try:
        _build("build", "--description", str(release))
        raw = Layout().out / f"{outputs.stem(description.load(release))}.raw"
        yield extract_root(
            raw,
            work,
            (
                "/etc/shadow",
                "/etc/systemd/system",
                "/usr/lib/systemd/system",
                "/root/.ssh",
                "/etc/ssh",
                "/etc/kruxos",
            ),
        )
    finally:
        _build("build")


@pytest.fixture(scope="session")
def booted(
    image: Path, appliance: description.Description, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Booted]:
    # One more boot if the kernel panics under emulation or QEMU prints nothing at all (boot.PANIC,
    # boot.SILENT_SECONDS say why); never more, so an image that really fails still fails.
    for attempt in (1, 2):
        with boot.running(image, guest_gateway_port=appliance.gateway.port) as vm:
            try:
                boot.wait_for_ssh(vm.ports.ssh, vm.started + BOOT_DEADLINE, vm.serial_log)
            except boot.GuestPanicked:
                if attempt == 2:
                    console = vm.serial_log.read_text(errors="replace")[-4000:]
                    pytest.fail(f"the guest failed to boot twice; serial console ends:\n{console}")
                continue
            except TimeoutError:
                console = vm.serial_log.read_text(errors="replace")[-4000:]
                pytest.fail(f"no SSH within {BOOT_DEADLINE:.0f}s; serial console ends:\n{console}")
            yield Booted(
                vm=vm,
                ssh_config=ssh_config_for(vm, tmp_path_factory.mktemp("ssh")),
                gateway_port=appliance.gateway.port,
                ssh_seconds=time.monotonic() - vm.started,
            )
            return


@pytest.fixture(scope="session")
def host(booted: Booted) -> Host:
    """The guest as a testinfra host (paramiko over the forwarded SSH port), once boot has settled."""
    h = testinfra.get_host(
        "paramiko://root@127.0.0.1",
        ssh_config=str(booted.ssh_config),
        ssh_identity_file=str(Layout().ssh_key),
        timeout=int(timeout(30)),
    )
    # degraded or running: either way boot is over; the tests say which one it should be
    h.run(f"timeout {timeout(300):.0f} systemctl is-system-running --wait")
    return h
