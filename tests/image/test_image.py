"""The booted appliance: what an operator and an agent find on it (dev profile, one boot per session)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from kruxos_build import boot

from .image_support import BOOT_DEADLINE, ROOT, Booted, Host, ssh_config_for, timeout

pytestmark = pytest.mark.image

# The SDK guide beside the repository (as for tests/guide), or where KRUXOS_SDK_GUIDE says.
GUIDE = Path(os.environ.get("KRUXOS_SDK_GUIDE") or ROOT.parent / "shared" / "spec" / "python-sdk-guide.md")
SDK = "/opt/kruxos/sdk/python"


def admin_key(host: Host) -> str:
    return str(host.check_output("cat /root/kruxos-admin.key")).strip()


def test_boot_finishes_with_no_failed_unit(host: Host) -> None:
    assert host.run("systemctl --failed --plain --no-legend").stdout.strip() == ""
    assert host.run("systemctl is-system-running").stdout.strip() == "running"


def test_first_boot_does_not_rebuild_the_hardware_database(host: Host) -> None:
    assert host.file("/usr/lib/udev/hwdb.bin").exists  # built into the image by mkosi.postinst.chroot
    assert host.check_output("systemctl show -P ConditionResult systemd-hwdb-update.service") == "no"


def test_the_sdk_tree_is_root_owned_and_writable_by_root_only(host: Host) -> None:
    assert host.file(f"{SDK}/kruxos/__init__.py").exists
    offenders = host.check_output(
        "find /opt/kruxos \\( ! -user root -o ! -group root -o -perm /022 \\) -print"
    )
    assert offenders == ""


def test_the_sdk_is_byte_compiled_by_the_images_python(host: Host) -> None:
    tag = host.check_output("python3 -c 'import sys; print(sys.implementation.cache_tag)'")
    assert host.file(f"{SDK}/kruxos/__pycache__/__init__.{tag}.pyc").exists
    # importing as an unprivileged user needs no write access: nothing new appears
    before = host.check_output(f"find {SDK} -name '*.pyc' | wc -l")
    host.check_output("runuser -u nobody -- python3 -c 'import kruxos'")
    assert host.check_output(f"find {SDK} -name '*.pyc' | wc -l") == before


def test_the_profile_script_is_installed_as_in_the_repository(host: Host) -> None:
    script = host.file("/etc/profile.d/kruxos-sdk.sh")
    assert (script.user, script.group, script.mode) == ("root", "root", 0o644)
    assert script.content_string == (ROOT / "profile.d/kruxos-sdk.sh").read_text()


def test_a_login_shell_gets_the_sdk_path_once_and_the_gateway_address(host: Host, booted: Booted) -> None:
    out = host.check_output(
        "bash -lc 'set -u; . /etc/profile.d/kruxos-sdk.sh; echo \"$PYTHONPATH|$KRUXOS_HOST\"'"
    )
    assert out == f"{SDK}|localhost:{booted.gateway_port}"


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("bash -lc {}", id="root-login-shell"),
        pytest.param("su -l nobody -s /bin/bash -c {}", id="unprivileged-login-shell"),
        pytest.param("runuser -u nobody -- sh -c {}", id="unprivileged-no-profile"),  # through kruxos-sdk.pth
    ],
)
def test_kruxos_imports_from_the_staged_sdk(host: Host, command: str) -> None:
    check = shlex.quote("python3 -c 'import kruxos; print(kruxos.__file__)'")
    assert host.check_output(command.format(check)) == f"{SDK}/kruxos/__init__.py"


def test_the_gateway_is_enabled_active_and_listening(host: Host, booted: Booted) -> None:
    gateway = host.service("kruxos-gateway")
    assert gateway.is_enabled
    assert gateway.is_running
    assert host.socket(f"tcp://0.0.0.0:{booted.gateway_port}").is_listening


def test_the_gateway_health_answers_through_the_forwarded_port(booted: Booted, host: Host) -> None:
    with urllib.request.urlopen(
        f"http://127.0.0.1:{booted.vm.ports.gateway}/health", timeout=timeout(10)
    ) as response:
        assert response.status == 200
        assert json.load(response)["status"] == "ok"


def test_the_gateway_runs_unprivileged_and_sandboxed(host: Host) -> None:
    assert host.check_output("systemctl show -P User kruxos-gateway") == "kruxos"
    exposure = host.check_output("systemd-analyze security --no-pager kruxos-gateway.service | tail -1")
    found = re.search(r"exposure level for kruxos-gateway\.service: ([0-9.]+)", exposure)
    assert found, exposure
    assert float(found.group(1)) <= 2.0, exposure


def test_the_first_admin_key_is_made_on_the_device_for_root_only(host: Host) -> None:
    key = host.file("/root/kruxos-admin.key")
    assert (key.user, key.group, key.mode) == ("root", "root", 0o600)
    assert re.fullmatch(r"[0-9a-f]{64}", admin_key(host))
    assert "admin" in host.check_output("kruxosctl --config /etc/kruxos/gateway.yaml keys list")


def test_an_agent_unit_imports_kruxos_and_invokes_capabilities(host: Host) -> None:
    agent = (
        "import kruxos\n"
        "from kruxos import KruxOS\n"
        "with KruxOS.connect() as agent:  # KRUXOS_HOST from the unit, the key from its credential\n"
        "    ran = agent.capabilities.invoke('process.run', command='echo $(id -u) $(id -g) $(id -G)')\n"
        "    print('process.run as:', ran.data['stdout'].strip())\n"
        "    agent.capabilities.invoke('filesystem.write', path='/workspace/from-agent.txt',\n"
        "                              content='hello from an agent\\n').raise_for_error()\n"
        "print('sdk:', kruxos.__file__)\n"
    )
    host.check_output(
        "kruxosctl --config /etc/kruxos/gateway.yaml keys create probe --output /etc/kruxos/agents/probe.key"
    )
    assert host.file("/etc/kruxos/agents/probe.key").mode == 0o600
    host.check_output(f"cat > /etc/kruxos/agents/probe.py <<'EOF'\n{agent}EOF")
    run = host.run(f"timeout {timeout(60):.0f} systemctl start --wait kruxos-agent@probe.service")
    log = host.check_output("journalctl --sync; journalctl -o cat -u kruxos-agent@probe.service")
    assert run.rc == 0, log
    # The key's own uid (process.key_uid_base + its number), in the workspace group and no other.
    workspace_gid = host.check_output("getent group kruxos-workspace | cut -d: -f3")
    assert re.search(rf"process.run as: 1\d{{5}} {workspace_gid} {workspace_gid}$", log, re.M), log
    assert f"sdk: {SDK}/kruxos/__init__.py" in log
    written = host.file("/workspace/from-agent.txt")
    assert written.content_string == "hello from an agent\n"
    assert written.group == "kruxos-workspace"


def test_the_gateway_enforces_the_installed_policy_and_reloads_it(host: Host) -> None:
    assert host.file("/etc/kruxos/policy.yaml").mode == 0o644
    decision = host.check_output(
        "kruxosctl --config /etc/kruxos/gateway.yaml policy test process.run command='sudo id' --key admin"
    )
    assert "deny" in decision, decision
    assert host.run("systemctl reload kruxos-gateway").rc == 0
    log = host.check_output("journalctl --sync; journalctl -o cat -u kruxos-gateway")
    assert "policy reloaded from /etc/kruxos/policy.yaml" in log, log
    assert "no policy file" not in log, log
    assert host.service("kruxos-gateway").is_running


def test_a_timed_out_command_of_the_agent_user_is_killed_with_its_children(host: Host) -> None:
    script = (
        "from kruxos import KruxOS\n"
        f"with KruxOS.connect(api_key='{admin_key(host)}') as agent:\n"
        "    ran = agent.capabilities.invoke(\n"
        "        'process.run', command='sleep 300 & sleep 301; echo never', timeout=2\n"
        "    )\n"
        "    print(ran.data['timed_out'], repr(ran.data['stdout']))\n"
    )
    host.check_output(f"cat > /root/timeout.py <<'EOF'\n{script}EOF")
    out = host.check_output(f"timeout {timeout(60):.0f} bash -lc 'python3 /root/timeout.py'")
    assert out == "True ''"
    # Both sleeps ran as the key's own uid; its cgroup (and CAP_KILL for the group) ends them.
    assert host.run("pgrep -f 'sleep 30[01]'").rc == 1


def _quick_start() -> str:
    return _guide_block("## Quick start", "python")


def _guide_block(heading: str, language: str) -> str:
    """The first ``language`` block under ``heading`` in the SDK guide (skip if there is none)."""
    if not GUIDE.exists():
        pytest.skip(f"no SDK guide at {GUIDE}")
    section = GUIDE.read_text().split(heading, 1)
    fence = f"```{language}"
    if len(section) < 2 or fence not in section[1].split("\n## ", 1)[0]:
        pytest.skip(f"the SDK guide has no {language} block under {heading!r}")
    return section[1].split(fence, 1)[1].split("```", 1)[0].lstrip("\n")


def test_the_guides_quick_start_runs_on_the_device(host: Host, booted: Booted) -> None:
    code = _quick_start()
    assert code.count('"localhost:7700"') == 1
    assert code.count('"<64-char hex>"') == 1
    code = code.replace('"localhost:7700"', f'"localhost:{booted.gateway_port}"')
    code = code.replace('"<64-char hex>"', f'"{admin_key(host)}"')
    host.check_output("printf 'Welcome to KruxOS\\n' > /workspace/README.md")
    host.check_output(f"cat > /root/quickstart.py <<'EOF'\n{code}EOF")
    out = host.check_output(f"timeout {timeout(60):.0f} python3 /root/quickstart.py").splitlines()
    count = re.fullmatch(r"Available: (\d+) capabilities", out[0])
    assert count
    assert int(count.group(1)) > 0
    assert out[1:] == ["Welcome to KruxOS"]


def test_the_guides_mcp_configuration_prints_the_devices_entry(host: Host, booted: Booted) -> None:
    code = _guide_block("## MCP configuration", "python")
    shown = json.loads(_guide_block("## MCP configuration", "json"))
    key = admin_key(host)
    address = f"localhost:{booted.gateway_port}"
    code = code.replace('"localhost:7700"', f'"{address}"')
    code = re.sub(r'api_key="[0-9a-f]{64}"', f'api_key="{key}"', code)
    host.check_output(f"cat > /root/mcp_config.py <<'EOF'\n{code}EOF")
    printed = json.loads(host.check_output(f"timeout {timeout(60):.0f} python3 /root/mcp_config.py"))
    entry = shown["mcpServers"]["kruxos"]
    assert printed == {
        "mcpServers": {
            "kruxos": {
                "url": entry["url"].replace("localhost:7700", address),
                "headers": {"Authorization": f"Bearer {key}"},
            }
        }
    }


def test_mcp_lists_the_devices_tools_through_the_forwarded_port(host: Host, booted: Booted) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{booted.vm.ports.gateway}/mcp",
        data=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode(),
        headers={
            "Authorization": f"Bearer {admin_key(host)}",
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
        },
    )
    with urllib.request.urlopen(request, timeout=timeout(30)) as response:
        tools = {t["name"] for t in json.load(response)["result"]["tools"]}
    assert {"filesystem_read", "process_run", "kruxos_wait_for_approval"} <= tools


def test_the_root_file_system_grew_to_fill_the_disk(host: Host) -> None:
    size = int(host.check_output("df --output=size -B1 / | tail -1"))
    assert size > (boot.DISK_SIZE * 3) // 4


def test_the_initrd_checks_the_root_file_system_before_mounting_it_writable(host: Host) -> None:
    # The initrd's journal is carried over into the main system's: e2fsck's verdict is in it.
    check = r"systemd-fsck@dev-gpt\x2dauto\x2droot.service"
    verdict = host.check_output(f"journalctl -b -o cat -u '{check}' --no-pager")
    assert re.search(r"root-x86-64: clean, \d+/\d+ files", verdict), verdict
    assert "rw" in host.check_output("findmnt -no OPTIONS /").split(",")
    assert host.check_output("systemctl show -P ConditionResult systemd-fsck-root.service") == "no"


def test_ssh_refuses_passwords(host: Host) -> None:
    effective = host.check_output("sshd -T 2>/dev/null | grep -E '^(passwordauthentication|kbdinteractive)'")
    assert sorted(effective.splitlines()) == ["kbdinteractiveauthentication no", "passwordauthentication no"]


def test_root_has_no_password(host: Host) -> None:
    field = host.check_output("getent shadow root | cut -d: -f2")
    assert field == "" or field[0] in "!*"
    assert field != "", "an empty field would allow a passwordless login"


def _host_key(port: int) -> str:
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    return scan.stdout.split()[-1]


def test_each_boot_of_the_image_makes_its_own_ssh_host_keys(
    booted: Booted,
    image: Path,
    host: Host,
    tmp_path: Path,
) -> None:
    first = _host_key(booted.vm.ports.ssh)
    # One Ed25519 host key: Debian's RSA and ECDSA keys are not made (sshd-keygen.service.d/10-kruxos.conf).
    assert host.check_output("ls /etc/ssh/ | grep '^ssh_host_.*_key$'").split() == ["ssh_host_ed25519_key"]
    with boot.running(image, guest_gateway_port=booted.gateway_port) as second_vm:
        boot.wait_for_ssh(second_vm.ports.ssh, time.monotonic() + BOOT_DEADLINE)
        ssh_config_for(second_vm, tmp_path)
        second = _host_key(second_vm.ports.ssh)
    assert first
    assert second
    assert first != second


# The release variant is not booted: it is built (reusing the cache) and its files are read from the image.


def test_release_locks_root(release_tree: Path) -> None:
    shadow = (release_tree / "etc/shadow").read_text()
    field = next(line for line in shadow.splitlines() if line.startswith("root:")).split(":")[1]
    assert field.startswith("!")


def test_release_has_no_autologin_anywhere(release_tree: Path) -> None:
    units = [release_tree / "etc/systemd/system", release_tree / "usr/lib/systemd/system"]
    found = [
        str(p.relative_to(release_tree))
        for d in units
        for p in d.rglob("*")
        if p.is_file() and "autologin" in p.read_text(errors="replace")
    ]
    assert found == []


def test_release_lets_in_only_the_operator_keys(release_tree: Path) -> None:
    keys = (release_tree / "root/.ssh/authorized_keys").read_text().splitlines()
    assert [k.split()[-1] for k in keys] == ["operator@test"]
    assert "PasswordAuthentication no" in (release_tree / "etc/ssh/sshd_config.d/10-kruxos.conf").read_text()


def test_the_image_ships_no_ssh_host_keys(release_tree: Path) -> None:
    assert sorted(p.name for p in (release_tree / "etc/ssh").glob("ssh_host_*")) == []
    assert (release_tree / "etc/ssh/sshd_config").exists()  # the extraction did find /etc/ssh


def test_an_agent_swapping_a_workspace_directory_for_a_symlink_cannot_reach_the_state_directory(
    host: Host,
) -> None:
    # The hostile agent of issue #11, with its own key under the shipped policy: its command flips
    # /workspace/d between a directory and a symlink to the gateway's state directory while it
    # writes, creates and deletes through d. The state directory must come out untouched.
    host.check_output("install -o kruxos -g kruxos -m 0600 /dev/null /var/lib/kruxos/canary")
    key = host.check_output("kruxosctl --config /etc/kruxos/gateway.yaml keys create swapper")
    script = (
        "import threading, time\n"
        "from kruxos import KruxOS, KruxOSError\n"
        f"with KruxOS.connect(api_key='{key}') as agent:\n"
        "    agent.capabilities.invoke('filesystem.mkdir', path='/workspace/d').raise_for_error()\n"
        "    loop = ('cd /workspace; end=$(($(date +%s)+12)); while [ $(date +%s) -lt $end ]; do '\n"
        "            'mv d d.p; ln -s /var/lib/kruxos d; rm d; mv d.p d; done')\n"
        "    swapper = threading.Thread(target=agent.capabilities.invoke, args=('process.run',),\n"
        "                               kwargs={'command': loop, 'timeout': 30})\n"
        "    swapper.start()\n"
        "    time.sleep(1)\n"
        "    tries = 0\n"
        "    while swapper.is_alive():\n"
        "        for name, inputs in (\n"
        "            ('filesystem.write', {'path': 'd/written', 'content': 'x', 'overwrite': True}),\n"
        "            ('filesystem.delete', {'path': 'd/canary'}),\n"
        "            ('filesystem.mkdir', {'path': 'd/made', 'parents': True}),\n"
        "        ):\n"
        "            try:\n"
        "                agent.capabilities.invoke(name, **inputs)\n"
        "            except KruxOSError:\n"
        "                pass\n"
        "            tries += 1\n"
        "    print('tries', tries)\n"
    )
    host.check_output(f"cat > /root/swapper.py <<'EOF'\n{script}EOF")
    out = host.check_output(f"timeout {timeout(120):.0f} bash -lc 'python3 /root/swapper.py'")
    assert int(out.split()[-1]) > 50, out
    assert host.file("/var/lib/kruxos/canary").exists
    assert not host.file("/var/lib/kruxos/written").exists
    assert not host.file("/var/lib/kruxos/made").exists
    assert host.service("kruxos-gateway").is_running


def test_a_daemon_started_by_a_command_does_not_outlive_it(host: Host) -> None:
    script = (
        "from kruxos import KruxOS\n"
        f"with KruxOS.connect(api_key='{admin_key(host)}') as agent:\n"
        "    ran = agent.capabilities.invoke(\n"
        "        'process.run',\n"
        "        command='setsid sh -c \"sleep 3007\" </dev/null >/dev/null 2>&1 & cat /proc/self/cgroup',\n"
        "    )\n"
        "    print(ran.data['stdout'].strip())\n"
    )
    host.check_output(f"cat > /root/daemon.py <<'EOF'\n{script}EOF")
    out = host.check_output(f"timeout {timeout(60):.0f} bash -lc 'python3 /root/daemon.py'")
    assert re.fullmatch(r"0::/cmd-[0-9a-f]{12}", out), out
    deadline = time.monotonic() + timeout(5)
    while host.run("pgrep -f 'sleep 3007'").rc == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert host.run("pgrep -f 'sleep 3007'").rc == 1
    assert host.check_output("ls /sys/fs/cgroup/system.slice/kruxos-gateway.service").count("cmd-") == 0


def test_an_agent_cannot_make_a_setuid_program_in_the_workspace(host: Host) -> None:
    # Its commands cannot set the bit (the unit's RestrictSUIDSGID= reaches them), and a write over a
    # setuid file the operator left there drops it.
    host.check_output("install -m 4755 /usr/bin/cat /workspace/operator-cat")
    script = (
        "from kruxos import KruxOS\n"
        f"with KruxOS.connect(api_key='{admin_key(host)}') as agent:\n"
        "    copy = 'cp /usr/bin/cat cat && chmod 4755 cat'\n"
        "    ran = agent.capabilities.invoke('process.run', command=copy)\n"
        "    print('chmod exit', ran.data['exit_code'])\n"
        "    wrote = agent.capabilities.invoke('filesystem.write', path='operator-cat', content='x')\n"
        "    wrote.raise_for_error()\n"
    )
    host.check_output(f"cat > /root/setuid.py <<'EOF'\n{script}EOF")
    out = host.check_output(f"timeout {timeout(60):.0f} bash -lc 'python3 /root/setuid.py'")
    assert out != "chmod exit 0", out
    for path in ("/workspace/cat", "/workspace/operator-cat"):
        assert not host.file(path).mode & 0o7000, path


def test_failed_handshakes_from_the_device_do_not_lock_out_a_valid_key(host: Host) -> None:
    script = (
        "from kruxos import KruxOS, AuthenticationError, KruxOSError\n"
        "for _ in range(15):\n"
        "    try:\n"
        "        KruxOS.connect(api_key='0' * 64).disconnect()\n"
        "    except KruxOSError:\n"
        "        pass\n"
        f"with KruxOS.connect(api_key='{admin_key(host)}') as agent:\n"
        "    print(agent.capabilities.invoke('filesystem.list', path='/workspace').success)\n"
    )
    host.check_output(f"cat > /root/lockout.py <<'EOF'\n{script}EOF")
    assert host.check_output(f"timeout {timeout(90):.0f} bash -lc 'python3 /root/lockout.py'") == "True"


def test_idle_connections_without_a_key_leave_room_for_authenticated_agents(host: Host) -> None:
    script = (
        "import socket, time\n"
        "from kruxos import KruxOS\n"
        "idle = [socket.create_connection(('127.0.0.1', 7700)) for _ in range(400)]\n"
        "time.sleep(1.5)  # idle for longer than a handshake takes: they give way to the agent\n"
        f"with KruxOS.connect(api_key='{admin_key(host)}') as agent:\n"
        "    ran = agent.capabilities.invoke('process.run', command='true')\n"
        "    print(ran.success, agent.capabilities.invoke('filesystem.list', path='/workspace').success)\n"
        "for s in idle:\n"
        "    s.close()\n"
    )
    host.check_output(f"cat > /root/idle.py <<'EOF'\n{script}EOF")
    out = host.check_output(f"timeout {timeout(120):.0f} bash -lc 'ulimit -n 4096; python3 /root/idle.py'")
    assert out == "True True", out
    assert host.service("kruxos-gateway").is_running


def test_a_keys_file_work_runs_as_its_own_uid_in_a_worker(host: Host) -> None:
    # Layer 2 of issue #11 on the appliance: filesystem.* runs in a worker with the key's process.run
    # credentials, so what it writes belongs to the key's uid, as its commands' files do.
    key = host.check_output("kruxosctl --config /etc/kruxos/gateway.yaml keys create file-worker")
    script = (
        "from kruxos import KruxOS\n"
        f"with KruxOS.connect(api_key='{key}') as agent:\n"
        "    path = '/workspace/by-worker.txt'\n"
        "    wrote = agent.capabilities.invoke('filesystem.write', path=path, content='x')\n"
        "    wrote.raise_for_error()\n"
        "    run = agent.capabilities.invoke('process.run', command='id -u').data\n"
        "    print(run['stdout'].strip())\n"
    )
    host.check_output(f"cat > /root/worker.py <<'EOF'\n{script}EOF")
    command_uid = host.check_output(f"timeout {timeout(120):.0f} bash -lc 'python3 /root/worker.py'")
    assert int(command_uid) >= 100000  # the appliance's key_uid_base
    assert host.check_output("stat -c %u /workspace/by-worker.txt") == command_uid
    workers = host.check_output("pgrep -u " + command_uid + " -f kruxos_gateway -c || true")
    assert workers.strip() == "1"  # its worker, idle until filesystem.worker_idle_timeout
    assert "fs-" in host.check_output("ls /sys/fs/cgroup/system.slice/kruxos-gateway.service")
