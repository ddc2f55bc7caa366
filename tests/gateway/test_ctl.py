"""kruxosctl: keys, audit and alerts straight from the gateway's database."""

from __future__ import annotations

import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kruxos_gateway.ctl.cli import main
from kruxos_gateway.storage import store

from .support import timeout, wait_until


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nworkspace: {{root: {tmp_path}}}\n")
    return path


def ctl(config: Path, *args: str) -> int:
    return main(["--config", str(config), *args])


def db(config: Path) -> Path:
    return config.parent / "state" / "gateway.db"


def test_keys_create_prints_only_the_key_on_stdout(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(config, "keys", "create", "alice") == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert out == key + "\n"
    assert len(key) == 64
    assert set(key) <= set("0123456789abcdef")
    assert "alice" in err
    conn = store.connect(db(config))
    try:
        authenticated = store.authenticate(conn, key)
        assert authenticated is not None
        assert authenticated.name == "alice"
    finally:
        conn.close()


def test_only_the_hash_of_a_key_is_stored(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctl(config, "keys", "create", "alice")
    key = capsys.readouterr().out.strip()
    assert key.encode() not in db(config).read_bytes()


def test_keys_create_output_writes_a_0600_file_and_nothing_on_stdout(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "alice.key"
    assert ctl(config, "keys", "create", "alice", "--output", str(target)) == 0
    assert capsys.readouterr().out == ""
    assert len(target.read_text().strip()) == 64
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_keys_list_shows_names_and_use_but_never_keys(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl(config, "keys", "create", "alice")
    key = capsys.readouterr().out.strip()
    assert ctl(config, "keys", "list") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "CREATED", "LAST", "USED", "REVOKED"]
    assert "alice" in out
    assert "never" in out
    assert key not in out


def test_a_revoked_key_no_longer_authenticates_and_its_name_can_be_taken_over(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl(config, "keys", "create", "alice")
    old = capsys.readouterr().out.strip()
    assert ctl(config, "keys", "revoke", "alice") == 0
    assert capsys.readouterr().err == (
        "revoked key 'alice': its next handshake is refused; no running gateway was signalled; "
        "a running one closes the key's connections within 5 s\n"
    )
    assert ctl(config, "keys", "create", "alice", "--take-over") == 0
    new = capsys.readouterr().out.strip()
    conn = store.connect(db(config))
    try:
        assert store.authenticate(conn, old) is None
        renewed = store.authenticate(conn, new)
        assert renewed is not None
        assert renewed.name == "alice"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["keys", "revoke", "nobody"], "no live key named 'nobody'", id="revoke-unknown"),
        pytest.param(["keys", "create", "bad name"], "invalid key name", id="bad-name"),
        pytest.param(
            ["keys", "create", "alice", "--output", "/no/such/dir/k"], "cannot write", id="bad-output"
        ),
        pytest.param(["audit", "tail", "-n", "0"], "-n must be at least 1", id="bad-count"),
    ],
)
def test_errors_are_one_line_with_exit_2(
    config: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert ctl(config, *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("kruxosctl: error: ")
    assert message in err


def test_a_duplicate_live_name_is_refused_with_a_hint(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl(config, "keys", "create", "alice")
    capsys.readouterr()
    assert ctl(config, "keys", "create", "alice") == 2
    assert "hint: revoke it first" in capsys.readouterr().err


def test_a_bad_config_is_one_line_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kruxos_gateway.ctl",
            "--config",
            str(tmp_path / "absent.yaml"),
            "keys",
            "list",
        ],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert "no such file" in result.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kruxos_gateway.ctl",
            "--debug",
            "--config",
            str(tmp_path / "absent.yaml"),
            "keys",
            "list",
        ],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr


def test_audit_tail_and_alerts_show_the_latest_records(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db(config).parent.mkdir()
    conn = store.connect(db(config))
    try:
        for i in range(3):
            store.append_audit(
                conn,
                store.AuditRecord(
                    store.now(), "alice", "s", f"inv_{i}", "filesystem.read", "0" * 64, "success", 1.5
                ),
            )
        store.insert_alert(conn, "alice", "error", "Disk", "full")
    finally:
        conn.close()
    assert ctl(config, "audit", "tail", "-n", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[-1] for line in lines] == ["inv_1", "inv_2"]
    assert ctl(config, "alerts") == 0
    out = capsys.readouterr().out
    assert "ERROR" in out
    assert "Disk: full" in out


@pytest.fixture
def foreign_state_dir() -> Iterator[Path]:
    """A state directory owned by nobody (65534), in a place that user can reach."""
    path = Path(tempfile.mkdtemp(prefix="kruxos-ctl-"))
    try:
        path.chmod(0o755)
        state = path / "state"
        state.mkdir()
        os.chown(state, 65534, 65534)
        yield state
    finally:
        shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_as_root_it_switches_to_the_owner_of_the_state_dir(foreign_state_dir: Path) -> None:
    config = foreign_state_dir.parent / "gateway.yaml"
    config.write_text(f"state_dir: {foreign_state_dir}\n")
    result = subprocess.run(
        [sys.executable, "-m", "kruxos_gateway.ctl", "--config", str(config), "keys", "create", "alice"],
        capture_output=True,
        text=True,
        timeout=timeout(30),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    database = foreign_state_dir / "gateway.db"
    assert (database.stat().st_uid, database.stat().st_gid) == (65534, 65534)


def test_audit_tail_follow_prints_new_records_until_interrupted(config: Path) -> None:
    db(config).parent.mkdir()
    store.connect(db(config)).close()
    with subprocess.Popen(
        [sys.executable, "-m", "kruxos_gateway.ctl", "--config", str(config), "audit", "tail", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as follower:
        try:
            conn = store.connect(db(config))
            try:
                store.append_audit(
                    conn,
                    store.AuditRecord(
                        store.now(), "alice", "s", "inv_new", "process.run", "0" * 64, "success", 2.0
                    ),
                )
            finally:
                conn.close()
            assert follower.stdout is not None
            stdout = follower.stdout
            wait_until(lambda: bool(select.select([stdout], [], [], 0)[0]), seconds=15)
            line = stdout.readline()
            assert line.split()[-1] == "inv_new"
        finally:
            follower.send_signal(signal.SIGINT)
            assert follower.wait(timeout(15)) == 0


def test_a_revoked_keys_name_is_not_given_to_a_new_key_without_saying_so(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Its persistent state and approvals are filed under the name: a new agent must not inherit them
    # because an operator happened to pick the same name.
    ctl(config, "keys", "create", "alice")
    ctl(config, "keys", "revoke", "alice")
    capsys.readouterr()
    assert ctl(config, "keys", "create", "alice") == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "kruxosctl: error: a revoked key was named 'alice', and its persistent state and approvals are"
        " filed under that name; hint: choose another name, or pass --take-over to give the new key"
        " everything 'alice' had\n"
    )


def test_rotating_a_key_replaces_it_under_the_same_name(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctl(config, "keys", "create", "alice")
    old = capsys.readouterr().out.strip()
    assert ctl(config, "keys", "rotate", "alice") == 0
    new = capsys.readouterr().out.strip()
    conn = store.connect(db(config))
    try:
        assert store.authenticate(conn, old) is None
        rotated = store.authenticate(conn, new)
        assert rotated is not None
        assert rotated.name == "alice"
    finally:
        conn.close()
