"""filesystem.* over a real connection: agents see /workspace whatever the real root is."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from .support import Client, RunningGateway, make_config, running_gateway

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def client(gateway: RunningGateway) -> AsyncIterator[Client]:
    async with gateway.client() as c:
        yield c


async def failure(client: Client, name: str, **inputs: object) -> dict[str, object]:
    result = await client.result(name, **inputs)
    assert result["success"] is False, result
    assert result["data"] is None
    error: dict[str, object] = result["error"]
    assert error["recovery"] or error["type"] in ("execution_failed",)
    return error


async def test_the_guide_quick_start_reads_workspace_readme(gateway: RunningGateway, client: Client) -> None:
    (gateway.workspace / "README.md").write_text("# hello\n")
    data = await client.data("filesystem.read", path="/workspace/README.md")
    assert data == {"path": "/workspace/README.md", "content": "# hello\n", "encoding": "utf-8", "size": 8}


async def test_a_written_file_reads_back(gateway: RunningGateway, client: Client) -> None:
    written = await client.data("filesystem.write", path="/workspace/data/page_1.json", content='{"a": 1}')
    assert written == {"path": "/workspace/data/page_1.json", "size": 8}
    assert (gateway.workspace / "data" / "page_1.json").read_text() == '{"a": 1}'
    assert (await client.data("filesystem.read", path="data/page_1.json"))["content"] == '{"a": 1}'


async def test_binary_content_round_trips_as_base64(gateway: RunningGateway, client: Client) -> None:
    blob = bytes(range(256))
    encoded = base64.b64encode(blob).decode()
    await client.data("filesystem.write", path="blob.bin", content=encoded, encoding="base64")
    assert (gateway.workspace / "blob.bin").read_bytes() == blob
    data = await client.data("filesystem.read", path="blob.bin", encoding="base64")
    assert data["content"] == encoded
    assert data["size"] == 256


async def test_reading_binary_as_text_fails_and_suggests_base64(
    gateway: RunningGateway, client: Client
) -> None:
    (gateway.workspace / "blob.bin").write_bytes(b"\xff\xfe")
    error = await failure(client, "filesystem.read", path="blob.bin")
    assert "base64" in str(error["recovery"])


async def test_a_write_replaces_the_file_atomically_keeping_its_mode(
    gateway: RunningGateway, client: Client
) -> None:
    target = gateway.workspace / "script.sh"
    target.write_text("old")
    target.chmod(0o755)
    await client.data("filesystem.write", path="script.sh", content="new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o755
    assert [p.name for p in gateway.workspace.iterdir()] == ["script.sh"], "no temp file left behind"


async def test_overwrite_false_refuses_an_existing_file(gateway: RunningGateway, client: Client) -> None:
    (gateway.workspace / "keep.txt").write_text("keep")
    error = await failure(client, "filesystem.write", path="keep.txt", content="x", overwrite=False)
    assert error["type"] == "already_exists"
    assert (gateway.workspace / "keep.txt").read_text() == "keep"


async def test_create_parents_false_needs_the_parent(client: Client) -> None:
    error = await failure(
        client, "filesystem.write", path="no/such/dir/f.txt", content="x", create_parents=False
    )
    assert error["type"] == "not_found"


@pytest.mark.parametrize(
    ("name", "inputs", "error_type"),
    [
        pytest.param("filesystem.read", {"path": "missing.txt"}, "not_found", id="read-missing"),
        pytest.param("filesystem.read", {"path": "dir"}, "is_a_directory", id="read-directory"),
        pytest.param("filesystem.list", {"path": "file.txt"}, "not_a_directory", id="list-file"),
        pytest.param(
            "filesystem.write", {"path": "dir", "content": "x"}, "is_a_directory", id="write-over-dir"
        ),
        pytest.param("filesystem.delete", {"path": "dir"}, "execution_failed", id="delete-nonempty-dir"),
        pytest.param("filesystem.delete", {"path": "/workspace"}, "permission_denied", id="delete-root"),
        pytest.param(
            "filesystem.mkdir", {"path": "dir", "parents": False}, "already_exists", id="mkdir-existing"
        ),
        pytest.param(
            "filesystem.move",
            {"src": "file.txt", "dst": "dir/inner.txt"},
            "already_exists",
            id="move-onto-existing",
        ),
        pytest.param("filesystem.stat", {"path": "nothing"}, "not_found", id="stat-missing"),
    ],
)
async def test_failures_are_failed_results_with_a_typed_error(
    gateway: RunningGateway, client: Client, name: str, inputs: dict[str, object], error_type: str
) -> None:
    (gateway.workspace / "file.txt").write_text("x")
    (gateway.workspace / "dir").mkdir()
    (gateway.workspace / "dir" / "inner.txt").write_text("y")
    error = await failure(client, name, **inputs)
    assert error["type"] == error_type


@pytest.mark.parametrize(
    ("name", "inputs"),
    [
        pytest.param("filesystem.read", {"path": "/etc/passwd"}, id="read-absolute"),
        pytest.param("filesystem.read", {"path": "../outside.txt"}, id="read-dotdot"),
        pytest.param("filesystem.read", {"path": "link/outside.txt"}, id="read-through-symlink"),
        pytest.param(
            "filesystem.write", {"path": "link/new.txt", "content": "x"}, id="write-through-symlink"
        ),
        pytest.param("filesystem.write", {"path": "/tmp/x.txt", "content": "x"}, id="write-absolute"),
        pytest.param("filesystem.list", {"path": "link"}, id="list-symlinked-dir"),
        pytest.param("filesystem.delete", {"path": "link/outside.txt"}, id="delete-through-symlink"),
        pytest.param("filesystem.mkdir", {"path": "link/sub"}, id="mkdir-through-symlink"),
        pytest.param("filesystem.move", {"src": "file.txt", "dst": "../moved.txt"}, id="move-out"),
        pytest.param("filesystem.move", {"src": "link/outside.txt", "dst": "in.txt"}, id="move-in"),
        pytest.param("process.run", {"command": "pwd", "cwd": "/"}, id="process-cwd"),
    ],
)
async def test_paths_outside_the_workspace_are_refused_with_a_recovery(
    tmp_path: Path, name: str, inputs: dict[str, object]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "outside.txt").write_text("secret")
    (tmp_path / "outside.txt").write_text("secret")
    async with running_gateway(make_config(tmp_path)) as gateway:
        (gateway.workspace / "file.txt").write_text("x")
        os.symlink(outside, gateway.workspace / "link")
        async with gateway.client() as client:
            error = await failure(client, name, **inputs)
    assert error["type"] == "path_outside_workspace"
    assert error["recovery"]
    assert sorted(p.name for p in outside.iterdir()) == ["outside.txt"]
    assert (outside / "outside.txt").read_text() == "secret"


async def test_list_reports_agent_visible_entries_sorted_by_name(
    gateway: RunningGateway, client: Client
) -> None:
    (gateway.workspace / "b.txt").write_text("bb")
    (gateway.workspace / "a").mkdir()
    os.symlink("b.txt", gateway.workspace / "c")
    data = await client.data("filesystem.list")
    assert data["path"] == "/workspace"
    assert [(e["name"], e["path"], e["type"]) for e in data["entries"]] == [
        ("a", "/workspace/a", "directory"),
        ("b.txt", "/workspace/b.txt", "file"),
        ("c", "/workspace/c", "symlink"),
    ]
    assert data["entries"][1]["size"] == 2
    assert data["entries"][1]["modified"].endswith("Z")


async def test_stat_describes_without_following_a_symlink(gateway: RunningGateway, client: Client) -> None:
    os.symlink("/etc/passwd", gateway.workspace / "pw")
    data = await client.data("filesystem.stat", path="pw")
    assert data["type"] == "symlink"
    assert data["symlink_target"] == "/etc/passwd"


async def test_delete_removes_a_symlink_not_its_target(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("keep")
    async with running_gateway(make_config(tmp_path)) as gateway:
        os.symlink(target, gateway.workspace / "link")
        async with gateway.client() as client:
            assert (await client.data("filesystem.delete", path="link"))["type"] == "symlink"
    assert target.read_text() == "keep"
    assert not (tmp_path / "workspace" / "link").exists()


async def test_recursive_delete_removes_a_tree(gateway: RunningGateway, client: Client) -> None:
    (gateway.workspace / "d" / "e").mkdir(parents=True)
    (gateway.workspace / "d" / "e" / "f").write_text("x")
    await client.data("filesystem.delete", path="d", recursive=True)
    assert not (gateway.workspace / "d").exists()


async def test_mkdir_creates_parents_and_accepts_an_existing_directory(
    gateway: RunningGateway, client: Client
) -> None:
    assert await client.data("filesystem.mkdir", path="x/y/z") == {
        "path": "/workspace/x/y/z",
        "created": True,
    }
    assert await client.data("filesystem.mkdir", path="x/y/z") == {
        "path": "/workspace/x/y/z",
        "created": False,
    }
    assert (gateway.workspace / "x" / "y" / "z").is_dir()


async def test_move_renames_inside_the_workspace(gateway: RunningGateway, client: Client) -> None:
    (gateway.workspace / "a.txt").write_text("a")
    assert await client.data("filesystem.move", src="a.txt", dst="sub/b.txt") == {
        "src": "/workspace/a.txt",
        "dst": "/workspace/sub/b.txt",
    }
    assert (gateway.workspace / "sub" / "b.txt").read_text() == "a"


@pytest.mark.parametrize(
    ("name", "inputs"),
    [
        pytest.param("filesystem.read", {"path": "big.txt"}, id="read"),
        pytest.param("filesystem.write", {"path": "new.txt", "content": "y" * 101}, id="write"),
    ],
)
async def test_files_over_the_size_limits_are_too_large(
    tmp_path: Path, name: str, inputs: dict[str, object]
) -> None:
    config = make_config(tmp_path, filesystem={"max_read_bytes": 100, "max_write_bytes": 100})
    async with running_gateway(config) as gateway:
        (gateway.workspace / "big.txt").write_text("x" * 101)
        async with gateway.client() as client:
            error = await failure(client, name, **inputs)
    assert error["type"] == "too_large"
    assert not (tmp_path / "workspace" / "new.txt").exists()
