"""The guide's state, transaction, briefing and complete-example samples run as written.

Only the gateway address, the key, and (in the complete example) the example API's base URL are
substituted. Two names the guide leaves to the reader are defined before the shared-state sample:
``VersionConflict`` (imported from ``kruxos``) and the watch callback ``on_config_change``, with the
documented signature ``(change: StateChange) -> None``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qs, urlsplit

import pytest
from kruxos import KruxOS

from .guide_gateway import RunningGateway, start_gateway
from .guide_samples import GUIDE_ADDRESS, GUIDE_KEYS, Sample, python_blocks

SECTIONS = [
    "Session state (in-memory, current session only)",
    "Persistent state (survives across sessions)",
    "Shared state (cross-agent, optimistic locking)",
    "Transactions",
    "Context briefings",
    "Complete example",
]
EXAMPLE_API = "https://api.example.com"
SHARED_PRELUDE = '''\
from kruxos import VersionConflict
from kruxos.models import StateChange


def on_config_change(change: StateChange) -> None:
    """Called with every change under the watched prefix, once each, in revision order."""
    print(f"{change.key} = {change.value!r} (version {change.version})")


'''


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """A gateway of its own, so that versions and briefings start from nothing."""
    with start_gateway(tmp_path_factory.mktemp("state-gateway")) as running:
        yield running


def run(gateway: RunningGateway, sample: Sample, prelude: str = "", **env: str) -> str:
    program = prelude + sample.program(address=gateway.address, key=gateway.key)
    assert GUIDE_ADDRESS not in program
    assert not any(placeholder in program for placeholder in GUIDE_KEYS)
    finished = gateway.run(program, env=env or None)
    assert finished.returncode == 0, f"{sample.section} failed:\n{finished.stderr}\n--- program:\n{program}"
    return finished.stdout


@pytest.mark.parametrize("section", SECTIONS)
def test_the_guide_has_one_python_sample_per_state_section(guide: Path, section: str) -> None:
    assert len(python_blocks(guide.read_text(encoding="utf-8")).get(section, [])) == 1


@pytest.mark.parametrize("sample", ["Session state (in-memory, current session only)"], indirect=True)
def test_session_state_prints_the_stored_value(fresh: RunningGateway, sample: Sample) -> None:
    assert run(fresh, sample) == "{'step': 3, 'total': 10}\n"


@pytest.mark.parametrize("sample", ["Persistent state (survives across sessions)"], indirect=True)
def test_persistent_state_prints_the_value_its_version_and_history(
    fresh: RunningGateway, sample: Sample
) -> None:
    lines = run(fresh, sample).splitlines()
    assert lines[0] == "Value: 0.85, version: 1"
    assert len(lines) == 2
    assert re.fullmatch(r"v1: 0\.85 \(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+\+00:00\)", lines[1])


@pytest.mark.parametrize("sample", ["Shared state (cross-agent, optimistic locking)"], indirect=True)
def test_shared_state_increments_the_counter_with_its_version(fresh: RunningGateway, sample: Sample) -> None:
    # The sample adds 1 to the counter's value, so the counter must exist: seed it (create-if-absent).
    with KruxOS.connect(fresh.address, api_key=fresh.key) as agent:
        agent.state.shared.set("counter", 41, expected_version=0)
        assert run(fresh, sample, SHARED_PRELUDE) == ""
        entry = agent.state.shared.get("counter")
    assert (entry.value, entry.version) == (42, 2)


@pytest.mark.parametrize("sample", ["Transactions"], indirect=True)
def test_transactions_commit_both_files(fresh: RunningGateway, sample: Sample) -> None:
    assert run(fresh, sample) == ""
    assert (fresh.workspace / "a.txt").read_text() == "hello"
    assert (fresh.workspace / "b.txt").read_text() == "world"


@pytest.mark.parametrize("sample", ["Context briefings"], indirect=True)
def test_context_briefing_prints_a_summary(fresh: RunningGateway, sample: Sample) -> None:
    summary = run(fresh, sample)
    assert summary.startswith(("This is the first session of this key: ", "Since your last session ended ("))
    assert summary.endswith(".\n")


class ExampleAPI(BaseHTTPRequestHandler):
    """``GET /data?page=N`` answers ``{"page": N}``; the page in ``fail_page`` drops the connection."""

    fail_page: ClassVar[int | None] = None
    requested: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        page = int(parse_qs(urlsplit(self.path).query)["page"][0])
        type(self).requested.append(page)
        if page == type(self).fail_page:
            self.close_connection = True  # no answer: the request fails with network_error
            return
        body = json.dumps({"page": page}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def example_api() -> Iterator[str]:
    ExampleAPI.fail_page, ExampleAPI.requested = None, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), ExampleAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("sample", ["Complete example"], indirect=True)
def test_the_complete_example_resumes_from_its_checkpoint(
    sample: Sample, example_api: str, tmp_path: Path
) -> None:
    assert EXAMPLE_API in sample.code
    # The example API stands in for a remote host: a policy that lets the agent reach it unasked.
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"version": 1, "default": "allow", "rules": []}))
    base = tmp_path / "gateway"
    base.mkdir()
    with start_gateway(base, policy={"file": str(policy)}) as gateway:
        program = sample.program(address=None, key=None).replace(EXAMPLE_API, example_api)
        env = {"KRUXOS_HOST": gateway.address, "KRUXOS_API_KEY": gateway.key}

        ExampleAPI.fail_page = 37  # the first run fails on page 37, alerts, and checkpoints there
        first = gateway.run(program, env=env)
        assert first.returncode == 0, first.stderr
        assert ExampleAPI.requested == list(range(38)), first.stdout

        ExampleAPI.fail_page, ExampleAPI.requested = None, []
        second = gateway.run(program, env=env)
        assert second.returncode == 0, second.stderr
        assert ExampleAPI.requested == list(range(37, 100))  # resumed from the checkpoint

        with KruxOS.connect(gateway.address, api_key=gateway.key) as agent:
            checkpoint = agent.state.persistent.get("research.checkpoint")
            history = agent.state.persistent.history("research.checkpoint", limit=200).versions
    assert first.stdout.startswith("This is the first session of this key: you have no persistent keys")
    assert second.stdout.startswith("Since your last session ended (")
    assert "you have 1 persistent key (research.checkpoint)" in second.stdout
    assert checkpoint.value == {"page": 99, "status": "completed"}
    # 38 checkpoints in the first run, 64 in the second; the newest 100 are kept (state.persistent_history).
    assert [v.version for v in history] == list(range(102, 2, -1))
    for page in range(100):
        assert json.loads((gateway.workspace / "data" / f"page_{page}.json").read_text()) == {"page": page}
