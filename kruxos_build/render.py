"""Render the appliance-specific delta: overlay/ (Jinja2 templates) + staged code -> build/generated/.

build/generated/ holds, all rendered from one description:
  mkosi.conf            the drop-in mkosi.conf.d/99-generated.conf includes
  pkgmngr/              apt sources used while building
  extra/                an extra tree: gateway.yaml, unit drop-ins, kruxosctl, operator keys,
                        and the staged SDK (/opt/kruxos/sdk/python/kruxos) and gateway (/opt/kruxos/gateway)
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .description import Description
from .errors import BuildError
from .paths import Layout

OVERLAY = "overlay"
SDK_SOURCE = Path("sdk/python/kruxos")
GATEWAY_SOURCE = Path("gateway/kruxos_gateway")
DEFAULT_POLICY_SOURCE = GATEWAY_SOURCE / "default-policy.yaml"

# Directory modes in the extra tree: copied over the image's own, so they must be right.
_PRIVATE_DIRS = ("root", "root/.ssh")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")


@dataclass(frozen=True)
class Rendered:
    """What ``render`` produced."""

    generated: Path
    sdk_version: str | None
    gateway_version: str | None
    staged: tuple[str, ...]


def _environment(root: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(root / OVERLAY),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # config files and shell, never HTML
    )


def kruxosctl_entry(root: Path) -> str:
    """The ``kruxosctl`` console script of the gateway package ("module:function").

    No fallback: an image whose kruxosctl names a module that is not there would build and then fail
    on the device, at the operator's first command.
    """
    pyproject = root / "gateway" / "pyproject.toml"
    try:
        entry = str(tomllib.loads(pyproject.read_text())["project"]["scripts"]["kruxosctl"])
    except OSError as exc:
        raise BuildError(
            f"cannot read {pyproject}: {exc.strerror}", hint="restore the gateway package"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise BuildError(f"{pyproject} is not valid TOML: {exc}") from None
    except KeyError:
        entry = ""
    module, _, function = entry.partition(":")
    if not module or not function:
        raise BuildError(
            f"{pyproject} declares no kruxosctl console script as module:function",
            hint='add [project.scripts] kruxosctl = "kruxos_gateway.ctl:main"',
        )
    return entry


def _package_version(root: Path, project: str, package_dir: Path) -> str | None:
    """The version declared by pyproject.toml, else ``__version__ = "..."`` in the package."""
    try:
        return str(tomllib.loads((root / project / "pyproject.toml").read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        pass
    for name in ("_version.py", "__init__.py"):
        try:
            for line in (package_dir / name).read_text().splitlines():
                if line.startswith("__version__") and "=" in line:
                    return line.split("=", 1)[1].strip().strip("\"'")
        except OSError:
            continue
    return None


def authorized_keys(description: Description, layout: Layout) -> list[str]:
    """Operator keys, plus in the dev profile the build host user's keys and the build key."""
    keys = list(description.ssh_keys)
    if description.profile == "dev":
        ensure_build_key(layout)
        keys.append(layout.ssh_key.with_suffix(".pub").read_text().strip())
        for pub in sorted((Path.home() / ".ssh").glob("*.pub")):
            keys.append(pub.read_text().strip())
    return sorted(set(keys), key=keys.index)


def ensure_build_key(layout: Layout) -> None:
    """The dev profile's SSH key (build/ssh/id_ed25519), made once per clone."""
    if layout.ssh_key.exists():
        return
    layout.ssh_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kruxos-build", "-f", str(layout.ssh_key)],
            check=True,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(
            f"cannot create the dev SSH key {layout.ssh_key}: {e}", hint="install openssh-client"
        ) from None


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _fix_modes(tree: Path) -> None:
    """Directories 0755 (private ones 0700), files keep their x bit: mkosi copies modes into the image."""
    for path in [tree, *tree.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            private = path.relative_to(tree).as_posix() in _PRIVATE_DIRS
            path.chmod(0o700 if private else 0o755)
        else:
            executable = path.stat().st_mode & stat.S_IXUSR
            private = path.parent.relative_to(tree).as_posix() in _PRIVATE_DIRS
            path.chmod((0o700 if executable else 0o600) if private else (0o755 if executable else 0o644))


def render(description: Description, description_path: Path, layout: Layout) -> Rendered:
    """Render everything into ``layout.generated`` (replacing what was there)."""
    root = layout.root
    generated = layout.generated
    if generated.exists():
        shutil.rmtree(generated)
    generated.mkdir(parents=True)

    entry = kruxosctl_entry(root)
    module, func = entry.split(":", 1)
    context: dict[str, Any] = {
        "d": description,
        "description_path": description_path,
        "generated": generated,
        "mkosi_out": layout.mkosi_out,
        "cache_dir": layout.cache,
        "kruxosctl_entry": entry,
        "kruxosctl_module": module,
        "kruxosctl_func": func,
    }
    env = _environment(root)
    for template in sorted(env.list_templates(extensions=["j2"])):
        try:
            text = env.get_template(template).render(context)
        except jinja2.TemplateError as e:
            raise BuildError(
                f"{OVERLAY}/{template}: {e.message or type(e).__name__}",
                hint="fix the template, or the description key it uses",
            ) from None
        if all(not line.strip() or line.startswith("#") for line in text.splitlines()):
            continue  # a file that says nothing for this description is not written at all
        target = generated / template.removesuffix(".j2")
        mode = 0o755 if target.parent.name == "bin" else 0o644
        _write(target, text, mode)

    extra = generated / "extra"
    keys = authorized_keys(description, layout)
    if keys:
        _write(extra / "root/.ssh/authorized_keys", "\n".join(keys) + "\n", 0o600)
    profile_script = root / "profile.d" / "kruxos-sdk.sh"
    _write(extra / "etc/profile.d/kruxos-sdk.sh", profile_script.read_text(), 0o644)

    staged: list[str] = []
    for package, in_image in (
        (SDK_SOURCE, "opt/kruxos/sdk/python/kruxos"),
        (GATEWAY_SOURCE, "opt/kruxos/gateway/kruxos_gateway"),
    ):
        shutil.copytree(root / package, extra / in_image, ignore=_IGNORE)
        staged.append(in_image)
    # The shipped default policy becomes the appliance's editable policy file (docs/operations.md).
    _write(extra / "etc/kruxos/policy.yaml", (root / DEFAULT_POLICY_SOURCE).read_text(), 0o644)
    _fix_modes(extra)
    (generated / "pkgmngr").chmod(0o755)

    return Rendered(
        generated=generated,
        sdk_version=_package_version(root, "sdk/python", root / SDK_SOURCE),
        gateway_version=_package_version(root, "gateway", root / GATEWAY_SOURCE),
        staged=tuple(staged),
    )
