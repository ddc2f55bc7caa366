"""A hostile agent against what the operator reads: kruxosctl output and the gateway's log.

Issue #11: ``kruxosctl alerts`` and the gateway log printed agent text raw (terminal escapes, bidi
overrides, forged log lines through ``\\n``), and ``approvals list`` hid what it left out: approvals
past the limit, and the tail of long inputs.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from kruxos import KruxOS
from kruxos_gateway.ctl.cli import main as kruxosctl
from kruxos_gateway.logs import configure_logging, escape

from .support import make_config, running_gateway, wait_until
from .test_approvals import approval_required, policed_gateway
from .test_approvals_daemon import Appliance
from .test_daemon import Daemon, daemons

__all__ = ["daemons"]  # the fixture, imported for the tests below

# Clears the screen, reverses what follows, and starts what looks like a line of its own.
HOSTILE = "\x1b[2J\u202eevil\nFAKE LOG LINE"


def assert_escaped(text: str) -> None:
    """No raw control or format character but line ends; the hostile text is there, visibly escaped."""
    raw = sorted({c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf")})
    assert not raw, f"raw control characters {raw!r} in {text!r}"
    assert "[2J" in text
    assert "\\u202eevil" in text
    assert "\\nFAKE LOG LINE" in text
    assert not [line for line in text.splitlines() if line.startswith("FAKE")], text


def ctl_config(tmp_path: Path) -> Path:
    """A configuration for kruxosctl naming the state directory of ``make_config(tmp_path)``."""
    path = tmp_path / "ctl.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\nworkspace: {{root: {tmp_path / 'workspace'}}}\n")
    return path


def ctl(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    assert kruxosctl(["--config", str(ctl_config(tmp_path)), *args]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


# --- the escaping itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("\x1b[2J", "\\x1b[2J", id="escape"),
        pytest.param("a\nb\r\tc", "a\\nb\\r\\tc", id="c0"),
        pytest.param("\x7f\x85\x9b", "\\x7f\\x85\\x9b", id="del-c1"),
        pytest.param("\u202ecba\u202c", "\\u202ecba\\u202c", id="bidi-override"),
        pytest.param("\u2066\u2069\u200e\u200f\u061c", "\\u2066\\u2069\\u200e\\u200f\\u061c", id="bidi"),
        pytest.param("a\u200bb\ufeff\u2028", "a\\u200bb\\ufeff\\u2028", id="invisible"),
        pytest.param("\U000e0041", "\\U000e0041", id="tag"),
        pytest.param("\ud800", "\\ud800", id="lone-surrogate"),
    ],
)
def test_controls_bidi_and_invisible_characters_are_shown_as_escapes(text: str, shown: str) -> None:
    assert escape(text) == shown


@pytest.mark.parametrize(
    "text", ["plain ASCII, ~!@#$%^&*()", "C:\\dir\\x1b", "Grüße, 日本語, עברית, العربية", "👩‍👩‍👧 ✔︎"]
)
def test_ordinary_text_is_left_as_it_is(text: str) -> None:
    assert escape(text) == text


# --- kruxosctl ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_kruxosctl_alerts_and_audit_escape_agent_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_gateway(make_config(tmp_path)) as gw, gw.client() as client:
        await client.data("alerts.send", severity="warning", title="t" + HOSTILE, message="m" + HOSTILE)
        await client.invoke("no.such" + HOSTILE)  # the audit log records the name the agent sent
    alerts, _ = ctl(tmp_path, capsys, "alerts")
    assert_escaped(alerts)
    assert len(alerts.splitlines()) == 1
    audit, _ = ctl(tmp_path, capsys, "audit", "tail")
    assert_escaped(audit)


LONG = "sleep 2 " + "x" * 80 + HOSTILE + " ; deploy ; rm -rf /workspace/important"


@pytest.mark.asyncio
async def test_kruxosctl_approvals_list_escapes_inputs_and_marks_what_it_cuts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with policed_gateway(tmp_path) as (gw, _), gw.client() as client:
        approval_id = await approval_required(client, LONG)
    out, err = ctl(tmp_path, capsys, "approvals", "list")
    row = next(line for line in out.splitlines() if line.startswith(approval_id))
    assert re.search(r"…\(\+\d+ chars\)", row), row
    assert not [c for c in out if unicodedata.category(c) in ("Cc", "Cf") and c != "\n"]
    assert "kruxosctl approvals show" in err


@pytest.mark.asyncio
async def test_kruxosctl_approvals_show_prints_the_full_inputs_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with policed_gateway(tmp_path) as (gw, _), gw.client() as client:
        approval_id = await approval_required(client, LONG)
    out, _ = ctl(tmp_path, capsys, "approvals", "show", approval_id)
    assert_escaped(out)
    inputs = next(line for line in out.splitlines() if line.startswith("inputs:"))
    assert "; rm -rf /workspace/important" in inputs


@pytest.mark.asyncio
async def test_kruxosctl_approvals_list_says_how_many_it_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with policed_gateway(tmp_path) as (gw, _), gw.client() as client:
        ids = [await approval_required(client, f"echo deploy {n}") for n in range(3)]
    out, err = ctl(tmp_path, capsys, "approvals", "list", "-n", "2")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ids[:2]
    assert "1 more not shown" in err
    assert "--limit" in err
    out, err = ctl(tmp_path, capsys, "approvals", "list", "--limit", "3")
    assert len(out.splitlines()) == 4
    assert "more not shown" not in err


# --- the gateway's log --------------------------------------------------------------------------


@pytest.mark.parametrize("journal", [False, True], ids=["stderr", "journal"])
def test_the_gateway_log_escapes_agent_text(tmp_path: Path, daemons: list[Daemon], journal: bool) -> None:
    appliance = Appliance(tmp_path, daemons, policy="version: 1\ndefault: allow\n")
    daemon = Daemon(tmp_path, appliance.config, env={"JOURNAL_STREAM": "8:12345" if journal else ""})
    daemons.append(daemon)
    port = daemon.wait_ready()
    with KruxOS.connect(f"127.0.0.1:{port}", api_key=appliance.key) as agent:
        agent.capabilities.invoke("alerts.send", severity="error", title=HOSTILE, message=HOSTILE)
    wait_until(lambda: "FAKE LOG LINE" in daemon.stderr)
    log = daemon.stderr
    assert_escaped(log)
    record_start = re.compile(r"<\d>kruxos_gateway" if journal else r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert all(record_start.match(line) for line in log.splitlines()), log


@pytest.fixture
def gateway_log(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """What the gateway's log configuration writes (to this stream, not stderr), undone afterwards.

    Parametrised with whether stderr is the journal (``JOURNAL_STREAM``).
    """
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345" if request.param else "")
    root, websockets = logging.getLogger(), logging.getLogger("websockets")
    saved, level, websockets_level = root.handlers[:], root.level, websockets.level
    configure_logging()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    yield stream
    root.handlers[:] = saved
    root.setLevel(level)
    websockets.setLevel(websockets_level)


@pytest.mark.parametrize("gateway_log", [False, True], ids=["stderr", "journal"], indirect=True)
def test_a_traceback_cannot_forge_a_log_record(gateway_log: io.StringIO) -> None:
    try:
        raise ValueError("bad input " + HOSTILE)
    except ValueError:
        logging.getLogger("kruxos_gateway.test").exception("failed on %s", HOSTILE)
    text = gateway_log.getvalue()
    assert_escaped(text)
    first, *rest = text.splitlines()
    assert first.endswith("failed on \\x1b[2J\\u202eevil\\nFAKE LOG LINE")
    assert rest
    prefix = "<3>" if first.startswith("<3>") else ""
    assert all(line.startswith(prefix + "  ") for line in rest), text
    # The exception's own lines are the traceback's: escaped one by one, indented like the rest.
    assert any(line.endswith("ValueError: bad input \\x1b[2J\\u202eevil") for line in rest), text


def test_kruxosctl_policy_show_escapes_a_bidi_override_but_keeps_the_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Trojan Source: an override pasted into the file must not hide what a rule says.
    text = "version: 1\ndefault: allow\nrules:\n  - {name: x\u202e, decision: deny}  # \x1b[2J\n"
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    config = tmp_path / "gateway.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\npolicy: {{file: {policy}}}\n")
    assert kruxosctl(["--config", str(config), "policy", "show"]) == 0
    out = capsys.readouterr().out
    assert out == text.replace("\u202e", "\\u202e").replace("\x1b", "\\x1b")
