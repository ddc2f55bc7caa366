"""Every sample of the SDK guide's covered sections runs as written against a real gateway.

The samples are read from the guide at test time (tests/guide/guide_samples.py); only the address and
the key are substituted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from kruxos import CapabilityError, KruxOS

from .guide_gateway import README, RunningGateway
from .guide_samples import GUIDE_ADDRESS, GUIDE_KEYS, Sample, fenced_blocks, python_blocks

COVERED = [
    "Quick start",
    "Connection",
    "Sync connection",
    "Connection from environment",
    "List all capabilities",
    "Filter by category",
    "Describe a capability",
    "Search by tag",
    "Basic invocation",
    "With error handling",
    "Pydantic models",
    "Logging",
    "MCP configuration (for Claude)",
]


def run(gateway: RunningGateway, sample: Sample, env: dict[str, str] | None = None) -> str:
    program = sample.program(address=gateway.address, key=gateway.key)
    assert GUIDE_ADDRESS not in program
    assert not any(placeholder in program for placeholder in GUIDE_KEYS)
    finished = gateway.run(program, env=env)
    assert finished.returncode == 0, f"{sample.section} failed:\n{finished.stderr}\n--- program:\n{program}"
    return finished.stdout


def capability_names(gateway: RunningGateway, **filters: str) -> list[str]:
    with KruxOS.connect(gateway.address, api_key=gateway.key) as agent:
        return [cap.name for cap in agent.capabilities.list(**filters)]


@pytest.mark.parametrize("section", COVERED)
def test_the_guide_has_one_python_sample_per_covered_section(guide: Path, section: str) -> None:
    assert len(python_blocks(guide.read_text(encoding="utf-8")).get(section, [])) == 1


@pytest.mark.parametrize("sample", ["Quick start"], indirect=True)
def test_quick_start_counts_the_capabilities_and_prints_the_readme(
    gateway: RunningGateway, sample: Sample
) -> None:
    out = run(gateway, sample)
    assert out.startswith(f"Available: {len(capability_names(gateway))} capabilities\n")
    assert README in out


@pytest.mark.parametrize("sample", ["Connection", "Sync connection"], indirect=True)
def test_connecting_with_an_explicit_address_and_key_runs_quietly(
    gateway: RunningGateway, sample: Sample
) -> None:
    assert run(gateway, sample) == ""


@pytest.mark.parametrize("sample", ["Connection from environment"], indirect=True)
def test_connection_from_environment_reads_kruxos_host_and_kruxos_api_key(
    gateway: RunningGateway, sample: Sample
) -> None:
    assert run(gateway, sample, env={"KRUXOS_HOST": gateway.address, "KRUXOS_API_KEY": gateway.key}) == ""


@pytest.mark.parametrize("sample", ["Connection from environment"], indirect=True)
def test_connection_from_environment_falls_back_to_the_systemd_credential(
    gateway: RunningGateway, sample: Sample, tmp_path: Path
) -> None:
    (tmp_path / "kruxos-api-key").write_text(gateway.key + "\n")
    assert (
        run(gateway, sample, env={"KRUXOS_HOST": gateway.address, "CREDENTIALS_DIRECTORY": str(tmp_path)})
        == ""
    )


@pytest.mark.parametrize("sample", ["Connection from environment"], indirect=True)
def test_connection_from_an_empty_environment_fails_with_a_configuration_error(
    gateway: RunningGateway, sample: Sample
) -> None:
    finished = gateway.run(sample.program(address=None, key=None))
    assert finished.returncode == 1
    assert "kruxos.errors.ConfigurationError: no gateway address" in finished.stderr
    assert "KRUXOS_HOST" in finished.stderr


@pytest.mark.parametrize("sample", ["List all capabilities"], indirect=True)
def test_list_all_capabilities_prints_each_name_with_its_tier(
    gateway: RunningGateway, sample: Sample
) -> None:
    lines = run(gateway, sample).splitlines()
    assert [line.split(" (")[0] for line in lines] == capability_names(gateway)
    assert "filesystem.read (read)" in lines


@pytest.mark.parametrize("sample", ["Filter by category", "Search by tag"], indirect=True)
def test_filtering_samples_run(gateway: RunningGateway, sample: Sample) -> None:
    assert run(gateway, sample) == ""


@pytest.mark.parametrize("sample", ["Describe a capability"], indirect=True)
def test_describe_prints_purpose_when_to_use_and_inputs(gateway: RunningGateway, sample: Sample) -> None:
    with KruxOS.connect(gateway.address, api_key=gateway.key) as agent:
        cap = agent.capabilities.describe("filesystem.read")
    lines = run(gateway, sample).splitlines()
    assert lines[:2] == [cap.purpose, cap.when_to_use]
    assert "  path: string (required)" in lines[2:]


@pytest.mark.parametrize("sample", ["Basic invocation"], indirect=True)
def test_basic_invocation_of_a_missing_file_prints_the_error(gateway: RunningGateway, sample: Sample) -> None:
    assert not (gateway.workspace / "data.csv").exists()
    assert run(gateway, sample).startswith("Error: not_found")


@pytest.mark.parametrize("sample", ["Basic invocation"], indirect=True)
def test_basic_invocation_of_an_existing_file_prints_its_content(
    gateway: RunningGateway, sample: Sample
) -> None:
    data = gateway.workspace / "data.csv"
    data.write_text("a,b\n1,2\n")
    try:
        assert run(gateway, sample) == "a,b\n1,2\n\n"
    finally:
        data.unlink()


@pytest.mark.parametrize("sample", ["With error handling"], indirect=True)
def test_with_error_handling_prints_the_commands_output_or_the_handled_error(
    gateway: RunningGateway, sample: Sample
) -> None:
    command = "ls -la /workspace"
    assert f'command="{command}"' in sample.code
    with KruxOS.connect(gateway.address, api_key=gateway.key) as agent:
        try:
            expected = agent.capabilities.invoke("process.run", command=command).data["stdout"] + "\n"
        except CapabilityError as e:
            expected = {
                "policy_denied": "Policy blocked: ",
                "approval_required": "Waiting for approval: ",
            }.get(e.type, f"Error: {e.type}")
    assert run(gateway, sample).startswith(expected)


@pytest.mark.parametrize("sample", ["Pydantic models", "Logging"], indirect=True)
def test_module_level_samples_run(gateway: RunningGateway, sample: Sample) -> None:
    assert run(gateway, sample) == ""


@pytest.mark.parametrize("sample", ["MCP configuration (for Claude)"], indirect=True)
def test_mcp_configuration_prints_the_guides_output_for_this_gateway_and_key(
    guide: Path, gateway: RunningGateway, sample: Sample
) -> None:
    (shown,) = fenced_blocks(guide.read_text(encoding="utf-8"), "json")["MCP configuration (for Claude)"]
    expected = shown.replace(GUIDE_ADDRESS, gateway.address)
    for placeholder in GUIDE_KEYS:
        expected = expected.replace(placeholder, gateway.key)
    assert run(gateway, sample) == expected
