"""The appliance description (appliance.yaml): loaded, validated, and reported in one line when wrong."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import DescriptionError

RELEASES = ("trixie",)

_NAME = r"^[a-z][a-z0-9-]{0,62}$"
_HOSTNAME = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_VERSION = r"^[0-9]+(\.[0-9]+)*([~+-][A-Za-z0-9.]+)?$"
_PACKAGE = r"^[a-z0-9][a-z0-9+.-]+$"
_URL = r"^https?://[^\s/]+(/[^\s]*)?$"
_SSH_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com"
    r"|sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,3}( .*)?$"
)


def _absolute_path(value: str) -> str:
    if not value.startswith("/") or value == "/" or ".." in value.split("/") or re.search(r"\s", value):
        raise ValueError("must be an absolute path below / without '..' or spaces")
    return value.rstrip("/")


def _ssh_key(value: str) -> str:
    value = value.strip()
    if not _SSH_KEY.match(value):
        raise ValueError("must be an OpenSSH public key line ('ssh-ed25519 AAAA... comment')")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Debian(_Strict):
    """Which Debian, and from where."""

    release: Literal[RELEASES]  # type: ignore[valid-type]  # a tuple of literals is what Literal[] takes
    mirror: Annotated[str, Field(pattern=_URL)] = "http://deb.debian.org/debian"
    security_mirror: Annotated[str, Field(pattern=_URL)] = "http://deb.debian.org/debian-security"


class Gateway(_Strict):
    """The gateway's listening port (supervision WebSocket, /health, MCP)."""

    port: Annotated[int, Field(ge=1, le=65535)] = 7700


class Description(_Strict):
    """An appliance description; see appliance.yaml for what each field means."""

    name: Annotated[str, Field(pattern=_NAME)]
    version: Annotated[str, Field(pattern=_VERSION)]
    debian: Debian
    hostname: Annotated[str, Field(pattern=_HOSTNAME)]
    gateway: Gateway = Gateway()
    workspace: Annotated[str, AfterValidator(_absolute_path)] = "/workspace"
    profile: Literal["dev", "release"] = "dev"
    packages: list[Annotated[str, Field(pattern=_PACKAGE)]] = []
    ssh_keys: list[Annotated[str, AfterValidator(_ssh_key)]] = []

    @model_validator(mode="after")
    def _release_needs_a_key(self) -> Description:
        if self.profile == "release" and not self.ssh_keys:
            raise ValueError("the release profile needs at least one operator key in ssh_keys")
        return self


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        message = message.replace("Input should be", "must be")
    elif kind == "string_pattern_mismatch":
        message = "is not valid here"
    else:
        message = message.replace("Input should be", "must be")
    value = error.get("input")
    shown = f" (got {value!r})" if where and not isinstance(value, dict | list) else ""
    return f"{where}: {message}{shown}" if where else message


def parse(data: Any, source: str) -> Description:
    """Validate already-loaded YAML data; ``source`` names it in the error."""
    if not isinstance(data, dict):
        raise DescriptionError(f"{source}: the description must be a YAML mapping of keys to values")
    try:
        return Description.model_validate(data)
    except ValidationError as e:
        raise DescriptionError(
            f"{source}: {_describe(e.errors()[0])}", hint="see appliance.yaml for every key and what it takes"
        ) from None


def load(path: Path) -> Description:
    """Read and validate the description at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DescriptionError(f"{path}: cannot read the description: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise DescriptionError(f"{path}: not valid YAML{where}") from None
    return parse(data, str(path))
