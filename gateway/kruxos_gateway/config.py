"""The gateway configuration file (/etc/kruxos/gateway.yaml), validated once at start-up.

Every key is optional; docs/gateway.md documents each one. Unknown keys and wrong types are
errors (``extra="forbid"``, strict types), reported as one line naming the key path.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/kruxos/gateway.yaml")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ListenConfig(_Section):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 7700


class WorkspaceConfig(_Section):
    root: Path = Path("/workspace")


class LimitsConfig(_Section):
    max_message_bytes: PositiveInt = 1_048_576
    max_in_flight: PositiveInt = 64
    handshake_timeout: PositiveFloat = 10.0
    idle_timeout: PositiveFloat = 300.0
    drain_timeout: Annotated[float, Field(ge=0)] = 10.0
    # What one client can hold without a key, and what one connection may have queued for sending
    # (docs/gateway.md, *Limits*).
    max_unauthenticated_connections: PositiveInt = 256
    max_unauthenticated_per_address: PositiveInt = 32
    reserved_descriptors: PositiveInt = 1024
    max_queued_bytes: PositiveInt = 1_048_576


class AuthConfig(_Section):
    failed_handshake_limit: PositiveInt = 10
    failed_handshake_window: PositiveFloat = 60.0


class FilesystemConfig(_Section):
    max_read_bytes: PositiveInt = 10_485_760
    max_write_bytes: PositiveInt = 10_485_760
    # With process.key_uid_base, each key's file work runs in a worker process of its uid: one that
    # has no call for this long exits; one that does not answer a call within worker_timeout is killed.
    worker_idle_timeout: PositiveFloat = 60.0
    worker_timeout: PositiveFloat = 120.0


class ProcessConfig(_Section):
    run_as_user: str | None = None
    run_as_group: str | None = None
    default_timeout: PositiveFloat = 60.0
    max_timeout: PositiveFloat = 3600.0
    max_output_bytes: PositiveInt = 1_048_576
    # Each key's commands run as key_uid_base + the key's number (its own uid), in run_as_group.
    key_uid_base: PositiveInt | None = None
    key_uid_count: PositiveInt = 65_536
    # "delegated" (the cgroup delegated to the gateway's unit: Delegate= + ProtectControlGroups=private),
    # an absolute path of a cgroup (v2) directory, or null: process groups only.
    cgroup_root: str | None = None
    max_memory_bytes: PositiveInt | None = None
    max_tasks: PositiveInt | None = None
    max_cpus: PositiveFloat | None = None

    @field_validator("cgroup_root")
    @classmethod
    def _cgroup_root(cls, value: str | None) -> str | None:
        if value is not None and value != "delegated" and not value.startswith("/"):
            raise ValueError(f"must be 'delegated', an absolute path or null (got {value!r})")
        return value


_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


def canonical_network(value: str) -> str:
    """An address or CIDR as ``ipaddress`` writes it (IPv4-mapped IPv6 as IPv4); ValueError if neither."""
    text = value.strip().lower()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        network = ipaddress.ip_network(text)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IP address or CIDR network ({exc})") from None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            network = ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return str(network.network_address) if network.num_addresses == 1 else str(network)


def _host_pattern(value: str) -> str:
    """One entry of allow_hosts/deny_hosts, canonical: ``name``, ``*.domain``, an IP address or a CIDR."""
    text = value.strip().lower()
    if "/" in text or ":" in text or re.fullmatch(r"[0-9.]+", text):
        return canonical_network(value)
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    name = name[:-1] if name.endswith(".") else name
    try:
        name = name.encode("idna").decode("ascii").lower()  # "bücher.example" as in a URL
    except UnicodeError:
        name = ""
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"{value!r} is not a host name, *.domain, IP address or CIDR "
            "(letters, digits, '-' and '_' between dots; no '%' escapes)"
        )
    if re.fullmatch(r"0x[0-9a-f]*|[0-9]+", labels[-1]):
        raise ValueError(f"{value!r} ends in a number: write an IPv4 address as four decimal numbers")
    return ("*." if wildcard else "") + name


HostPattern = Annotated[str, AfterValidator(_host_pattern)]
AddressPattern = Annotated[str, AfterValidator(canonical_network)]


class NetworkConfig(_Section):
    # Host rules apply to the URL's canonical host; deny_hosts addresses and CIDRs also to every
    # address it resolves to. Special-purpose and own addresses are refused unless in allow_addresses.
    allow_hosts: list[HostPattern] = []
    deny_hosts: list[HostPattern] = []
    allow_addresses: list[AddressPattern] = []
    max_response_bytes: PositiveInt = 10_485_760
    default_timeout: PositiveFloat = 30.0
    max_timeout: PositiveFloat = 300.0


class PolicyConfig(_Section):
    # The policy file. One the configuration names must exist (a missing one stops the start and is
    # refused on reload); only when none is named and none is at this default path does the shipped
    # default policy apply (policy.configured_policy, docs/gateway.md).
    file: str = "/etc/kruxos/policy.yaml"
    approval_timeout: PositiveFloat = 3600.0
    approval_poll_interval: PositiveFloat = 2.0


class StateConfig(_Section):
    # Agent state (docs/gateway.md, *Agent state*).
    max_key_length: PositiveInt = 256
    max_value_bytes: PositiveInt = 262_144
    max_session_keys: PositiveInt = 10_000
    persistent_history: PositiveInt = 100
    shared_history: PositiveInt = 100_000
    max_transaction_snapshot_bytes: PositiveInt = 1_073_741_824


class QuotasConfig(_Section):
    # What one API key may hold at once, over all its connections; session bytes are per connection
    # (docs/gateway.md, *Agent state*, Quotas). Past one: quota_exceeded.
    connections: PositiveInt = 64
    persistent_keys: PositiveInt = 10_000
    persistent_bytes: PositiveInt = 67_108_864
    shared_keys: PositiveInt = 10_000
    shared_bytes: PositiveInt = 67_108_864
    session_bytes_per_connection: PositiveInt = 16_777_216
    transaction_snapshot_bytes: PositiveInt = 268_435_456


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (an address in 127/8 or ::1, or localhost)."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class SmtpConfig(_Section):
    host: str = Field(min_length=1)
    # implicit: TLS from the first byte (465); starttls: upgraded before AUTH (587); none: plain
    # text, for a server on loopback only (the test suite's). Certificates are always verified.
    tls: Literal["implicit", "starttls", "none"] = "implicit"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    user: str | None = None
    timeout: PositiveFloat = 60.0

    @model_validator(mode="after")
    def _plain_only_on_loopback(self) -> SmtpConfig:
        if self.tls == "none" and not is_loopback(self.host):
            raise ValueError(f"tls: none is allowed for a loopback host only (got {self.host!r})")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {"implicit": 465, "starttls": 587, "none": 25}[self.tls]


class EmailAccountConfig(_Section):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    # The From address of what this account sends.
    address: Annotated[str, Field(pattern=r"^[!-;=?A-~]+@[!-;=?A-~]+$")]  # ASCII, no <>, @ once
    smtp: SmtpConfig
    # A file holding the password (or app password), readable only by the gateway's user.
    password_file: Path | None = None
    # Or the name of a systemd credential (LoadCredential=/LoadCredentialEncrypted= in the
    # gateway's unit), read from $CREDENTIALS_DIRECTORY; never both (proxies/email/credentials.py).
    credential: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")] | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> EmailAccountConfig:
        if self.password_file is not None and self.credential is not None:
            raise ValueError("set password_file or credential, not both")
        return self


class EmailConfig(_Section):
    accounts: list[EmailAccountConfig] = []
    # How long a buffered send waits (and can be cancelled) before it is delivered.
    send_window: Annotated[float, Field(ge=0)] = 300.0
    max_recipients: PositiveInt = 50
    max_body_bytes: PositiveInt = 1_048_576
    # Temporary failures before DATA (refused connection, 4xx): attempts in all, and the first
    # delay between them (doubled each time).
    max_attempts: PositiveInt = 5
    retry_delay: PositiveFloat = 30.0

    @field_validator("accounts")
    @classmethod
    def _unique_names(cls, value: list[EmailAccountConfig]) -> list[EmailAccountConfig]:
        names = [a.name for a in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"account name {name!r} is used twice")
        return value

    def account(self, name: str) -> EmailAccountConfig | None:
        return next((a for a in self.accounts if a.name == name), None)


class GatewayConfig(_Section):
    listen: ListenConfig = ListenConfig()
    state_dir: Path = Path("/var/lib/kruxos")
    workspace: WorkspaceConfig = WorkspaceConfig()
    limits: LimitsConfig = LimitsConfig()
    auth: AuthConfig = AuthConfig()
    filesystem: FilesystemConfig = FilesystemConfig()
    process: ProcessConfig = ProcessConfig()
    network: NetworkConfig = NetworkConfig()
    state: StateConfig = StateConfig()
    quotas: QuotasConfig = QuotasConfig()
    policy: PolicyConfig = PolicyConfig()
    email: EmailConfig = EmailConfig()

    @property
    def db_path(self) -> Path:
        return self.state_dir / "gateway.db"


def parse_config(text: str, source: str = "<config>") -> GatewayConfig:
    """Parse and validate YAML text; raise ``ConfigError`` with a one-line message."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, got {type(raw).__name__}")
    # YAML has no path type: accept strings for the Path fields, strictly everywhere else.
    try:
        return GatewayConfig.model_validate(_paths_as_path(raw))
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def _paths_as_path(raw: dict[str, object]) -> dict[str, object]:
    out = dict(raw)
    if isinstance(out.get("state_dir"), str):
        out["state_dir"] = Path(str(out["state_dir"]))
    workspace = out.get("workspace")
    if isinstance(workspace, dict) and isinstance(workspace.get("root"), str):
        out["workspace"] = {**workspace, "root": Path(workspace["root"])}
    email = out.get("email")
    if isinstance(email, dict) and isinstance(email.get("accounts"), list):
        accounts = [
            {**a, "password_file": Path(a["password_file"])}
            if isinstance(a, dict) and isinstance(a.get("password_file"), str)
            else a
            for a in email["accounts"]
        ]
        out["email"] = {**email, "accounts": accounts}
    return out


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad key path and what is wrong with it."""
    errors = exc.errors()
    first = errors[0]
    path = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        problem = "unknown key"
    else:
        problem = f"{first['msg']} (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{path}: {problem}{more}"


def load_config(path: Path) -> GatewayConfig:
    """Read and validate the configuration file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, str(path))
