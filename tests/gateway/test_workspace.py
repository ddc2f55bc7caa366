"""Agent paths stay in the workspace: /workspace/... or relative, never out through '..' or symlinks."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kruxos_gateway.capabilities import _fs_ops
from kruxos_gateway.capabilities.workspace import Location, Workspace
from kruxos_gateway.errors import GatewayError, InvalidInput, PathOutsideWorkspace

SECRET = "secret outside the workspace"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    """A workspace with symlinks that lead out, lead in, go up and loop; a secret beside it."""
    base = tmp_path_factory.mktemp("tree")
    root = base / "ws"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f.txt").write_text("inside")
    (root / "notes.txt").write_text("notes")
    (base / "outside").mkdir()
    (base / "outside" / "f.txt").write_text(SECRET)
    (base / "secret.txt").write_text(SECRET)
    (base / "ws-evil").mkdir()  # a sibling whose name starts like the root
    (base / "ws-evil" / "f.txt").write_text(SECRET)
    os.symlink(base / "outside", root / "out")
    os.symlink("../outside/f.txt", root / "out_file")
    os.symlink("../ws-evil", root / "evil")
    os.symlink("../..", root / "a" / "up")
    os.symlink("b", root / "a" / "in")
    os.symlink(root / "a" / "b" / "f.txt", root / "abs_in")
    os.symlink("loop", root / "loop")
    os.symlink("/etc/passwd", root / "passwd")
    return Workspace(root)


@pytest.mark.parametrize(
    ("path", "agent", "relative_real"),
    [
        pytest.param("/workspace", "/workspace", "", id="root"),
        pytest.param("/workspace/", "/workspace", "", id="root-slash"),
        pytest.param("notes.txt", "/workspace/notes.txt", "notes.txt", id="relative"),
        pytest.param("./a/../notes.txt", "/workspace/notes.txt", "notes.txt", id="dotdot-inside"),
        pytest.param("/workspace/a/in/f.txt", "/workspace/a/in/f.txt", "a/b/f.txt", id="symlink-inside"),
        pytest.param("abs_in", "/workspace/abs_in", "a/b/f.txt", id="absolute-symlink-inside"),
        pytest.param("new/file.txt", "/workspace/new/file.txt", "new/file.txt", id="not-yet-existing"),
    ],
)
def test_paths_inside_resolve_to_the_real_root(
    tree: Workspace, path: str, agent: str, relative_real: str
) -> None:
    resolved = tree.resolve(path)
    assert resolved.agent == agent
    assert resolved.real == os.path.join(tree.root, relative_real).rstrip("/")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/etc/passwd", id="absolute-outside"),
        pytest.param("/workspacefoo/x", id="prefix-lookalike"),
        pytest.param("../secret.txt", id="dotdot-relative"),
        pytest.param("/workspace/../etc", id="dotdot-absolute"),
        pytest.param("a/b/../../../secret.txt", id="dotdot-deep"),
        pytest.param("//workspace/x", id="double-slash"),
        pytest.param("out/f.txt", id="symlink-dir-out"),
        pytest.param("out_file", id="symlink-file-out"),
        pytest.param("evil/f.txt", id="symlink-to-lookalike-sibling"),
        pytest.param("a/up/secret.txt", id="symlink-up"),
        pytest.param("passwd", id="symlink-absolute-out"),
    ],
)
def test_paths_leading_out_are_refused(tree: Workspace, path: str) -> None:
    with pytest.raises(PathOutsideWorkspace) as excinfo:
        tree.resolve(path)
    error = excinfo.value.to_info()
    assert error.type == "path_outside_workspace"
    assert error.recovery


def test_a_symlink_leading_out_can_itself_be_described(tree: Workspace) -> None:
    resolved = tree.resolve("out", follow_final=False)
    assert resolved.real == os.path.join(tree.root, "out")


@pytest.mark.parametrize("path", [pytest.param("", id="empty"), pytest.param("a\0b", id="nul-byte")])
def test_unusable_paths_are_invalid_input(tree: Workspace, path: str) -> None:
    with pytest.raises(InvalidInput):
        tree.resolve(path)


COMPONENTS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "a",
        "b",
        "in",
        "up",
        "out",
        "out_file",
        "evil",
        "abs_in",
        "loop",
        "passwd",
        "f.txt",
        "notes.txt",
        "secret.txt",
        "outside",
        "ws",
        "workspace",
        "etc",
    ]
)
PATHS = st.tuples(
    st.sampled_from(["", "/", "/workspace/", "/workspace/../", "//", "./", "../"]),
    st.lists(COMPONENTS, max_size=8),
).map(lambda t: t[0] + "/".join(t[1]))


@settings(max_examples=500, deadline=None)
@given(path=PATHS, follow_final=st.booleans())
def test_no_generated_path_resolves_outside_the_workspace(
    tree: Workspace, path: str, follow_final: bool
) -> None:
    try:
        resolved = tree.resolve(path, follow_final=follow_final)
    except (PathOutsideWorkspace, InvalidInput):
        return
    assert resolved.agent == "/workspace" or resolved.agent.startswith("/workspace/")
    is_root = resolved.real == tree.root
    parent = resolved.real if follow_final or is_root else os.path.realpath(os.path.dirname(resolved.real))
    for real in (resolved.real, parent):
        assert real == tree.root or real.startswith(tree.root + "/"), (path, real)
    if follow_final:
        assert os.path.realpath(resolved.real) == resolved.real


@settings(max_examples=500, deadline=None)
@given(path=PATHS, follow_final=st.booleans())
def test_resolution_agrees_with_os_realpath_of_the_path_under_the_root(
    tree: Workspace, path: str, follow_final: bool
) -> None:
    # The resolver walks only the agent's components (the root is resolved once); it must land
    # exactly where os.path.realpath of the whole path does, links, loops and missing parts included.
    try:
        resolved = tree.resolve(path, follow_final=follow_final)
    except (PathOutsideWorkspace, InvalidInput):
        return
    relative = resolved.agent[len("/workspace") :].lstrip("/")
    expected = os.path.realpath(os.path.join(tree.root, relative))
    if not follow_final and relative:
        head, _, name = os.path.join(tree.root, relative).rpartition("/")
        expected = os.path.join(os.path.realpath(head), name)
    assert resolved.real == expected


@settings(max_examples=300, deadline=None)
@given(path=PATHS)
def test_no_generated_path_reads_a_file_outside_the_workspace(tree: Workspace, path: str) -> None:
    try:
        data = _fs_ops.read(tree, path, "utf-8", 1 << 20)
    except GatewayError:
        return
    assert data["content"] != SECRET


def test_a_symlink_swapped_in_after_resolution_is_not_followed(tree: Workspace, tmp_path: Path) -> None:
    (tmp_path / "target").write_text(SECRET)
    link = Path(tree.root) / "swapped"
    os.symlink(tmp_path / "target", link)
    try:
        # As if the path had been walked before the swap: the final name is opened in its parent.
        root_fd = os.open(tree.root, os.O_PATH | os.O_DIRECTORY)
        located = Location(agent="/workspace/swapped", parent_fd=root_fd, name="swapped", real=str(link))
        with pytest.raises(OSError, match="Too many levels of symbolic links"):
            _fs_ops._open_at(located, os.O_RDONLY)
    finally:
        os.close(root_fd)
        link.unlink()


LINK_TARGETS = st.sampled_from(
    ["..", "../..", "/", "/etc", ".", "a", "a/b", "../outside", "../ws-sibling", "b/../..", "x", "a/x/../.."]
)


@settings(max_examples=200, deadline=None)
@given(
    links=st.lists(
        st.tuples(st.sampled_from(["a", "a/b", ""]), st.sampled_from(["x", "y"]), LINK_TARGETS), max_size=4
    ),
    path=PATHS,
    follow_final=st.booleans(),
)
def test_no_generated_symlinks_let_a_path_escape(
    links: list[tuple[str, str, str]], path: str, follow_final: bool
) -> None:
    with tempfile.TemporaryDirectory() as base:
        root = Path(base) / "ws"
        (root / "a" / "b").mkdir(parents=True)
        (Path(base) / "outside").mkdir()
        (Path(base) / "ws-sibling").mkdir()
        for directory, name, target in links:
            with contextlib.suppress(FileExistsError):
                os.symlink(target, root / directory / name)
        workspace = Workspace(root)
        try:
            resolved = workspace.resolve(path, follow_final=follow_final)
        except (PathOutsideWorkspace, InvalidInput):
            return
        real = resolved.real
        if not follow_final and real != workspace.root:
            real = os.path.realpath(os.path.dirname(real))
        assert real == workspace.root or real.startswith(workspace.root + "/"), (path, links, real)
