"""Where to connect and with which key: arguments, then the environment, then the device's files.

The address: ``host``, else ``$KRUXOS_HOST``, else ``KRUXOS_HOST`` in ``/etc/kruxos/sdk.env`` (the
appliance writes it, so ``ssh appliance python3 agent.py`` and cron jobs, which read no login
profile, still connect). The key: ``api_key``, else ``$KRUXOS_API_KEY``, else the systemd credential.

Pure functions over an environment mapping, so tests need neither sockets nor ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kruxos.errors import ConfigurationError

__all__ = [
    "API_KEY_ENV",
    "CREDENTIAL_NAME",
    "DEFAULT_PATH",
    "DEFAULT_PORT",
    "HOST_ENV",
    "SDK_ENV_FILE",
    "resolve_api_key",
    "resolve_url",
    "validate_api_key",
]

HOST_ENV = "KRUXOS_HOST"
API_KEY_ENV = "KRUXOS_API_KEY"
CREDENTIAL_NAME = "kruxos-api-key"
"""File name of the key in ``$CREDENTIALS_DIRECTORY`` (``LoadCredential=`` of kruxos-agent@.service)."""
DEFAULT_PORT = 7700
DEFAULT_PATH = "/v1/supervision"
SDK_ENV_FILE = Path("/etc/kruxos/sdk.env")
"""Written by the image (``KRUXOS_HOST=localhost:<port>``); an ``EnvironmentFile=`` of agent units."""

_API_KEY = re.compile(r"[0-9a-f]{64}")


def resolve_url(
    host: str | None, environ: Mapping[str, str] = os.environ, sdk_env: Path = SDK_ENV_FILE
) -> str:
    """The WebSocket URL for ``host``, else ``$KRUXOS_HOST``, else ``KRUXOS_HOST`` in ``sdk_env``."""
    if host is not None:
        return _parse_address(host, source="host")
    if from_env := environ.get(HOST_ENV):
        return _parse_address(from_env, source=HOST_ENV)
    if from_file := _read_env_file(sdk_env).get(HOST_ENV):
        return _parse_address(from_file, source=f"{HOST_ENV} in {sdk_env}")
    raise ConfigurationError(
        f"no gateway address: pass host='HOST:PORT' (e.g. 'localhost:{DEFAULT_PORT}') "
        f"or set {HOST_ENV} (on the appliance, {sdk_env} sets it)"
    )


def _read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines of a systemd environment file; none if it is absent or unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        name, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def _parse_address(address: str, *, source: str) -> str:
    address = address.strip()
    if not address:
        raise ConfigurationError(f"{source} is empty: expected 'HOST:PORT', 'ws://…' or 'wss://…'")
    if "://" not in address:
        if address.count(":") > 1 and not address.startswith("["):
            address = f"[{address}]"  # a bare IPv6 literal such as ::1
        address = f"ws://{address}"
    try:
        parts = urlsplit(address)
        hostname, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{source} is not a valid gateway address: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise ConfigurationError(
            f"{source} has scheme {parts.scheme!r}; the gateway speaks WebSocket: use 'ws://' or 'wss://'"
        )
    if not hostname:
        raise ConfigurationError(f"{source} names no host: expected 'HOST:PORT', 'ws://…' or 'wss://…'")
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"{source} must not carry credentials; pass the key as api_key")
    host_part = f"[{hostname}]" if ":" in hostname else hostname
    netloc = f"{host_part}:{port if port is not None else DEFAULT_PORT}"
    return urlunsplit((parts.scheme, netloc, parts.path or DEFAULT_PATH, parts.query, ""))


def resolve_api_key(api_key: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """``api_key``, else ``$KRUXOS_API_KEY``, else ``$CREDENTIALS_DIRECTORY/kruxos-api-key``; validated."""
    if api_key is not None:
        return validate_api_key(api_key, source="api_key")
    from_env = environ.get(API_KEY_ENV)
    if from_env:
        return validate_api_key(from_env.strip(), source=API_KEY_ENV)
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        path = Path(credentials) / CREDENTIAL_NAME
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ConfigurationError(f"cannot read the API key credential {path}: {reason}") from None
        else:
            return validate_api_key(text.strip(), source=str(path))
    raise ConfigurationError(
        f"no API key: pass api_key=..., set {API_KEY_ENV}, or run under a systemd unit that loads "
        f"the credential {CREDENTIAL_NAME!r}"
    )


def validate_api_key(key: str, *, source: str = "api_key") -> str:
    """Return ``key`` if it is 64 lowercase hex characters; the error never contains the key."""
    if _API_KEY.fullmatch(key):
        return key
    if len(key) == 64 and _API_KEY.fullmatch(key.lower()):
        problem = "has uppercase letters"
    elif len(key) != 64:
        problem = f"is {len(key)} characters long"
    else:
        problem = "has characters that are not hexadecimal digits"
    raise ConfigurationError(
        f"{source} is not a KruxOS API key: a key is exactly 64 lowercase hexadecimal characters, "
        f"this one {problem} (create one with `kruxosctl keys create NAME`)"
    )
