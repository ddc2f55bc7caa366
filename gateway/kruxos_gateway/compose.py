"""The composition root: every part of one gateway, built in one place, in dependency order.

Nothing here decides anything; it only hands each feature its narrow collaborators, so that no
feature reaches into another or changes one after it was built::

    workspace, policy gate ─┐
    file work ──────────────┤   (the gateway's threads, or one worker process per key's uid)
    state service ──────────┼─> registry (built-in capabilities + state's)
    approval book ──────────┤
    proxies ────────────────┤   (email.send, proxy.*: only when email.accounts has one)
    registry, policy, book ─┴─> pipeline (observers: state's file records)
    pipeline ─> approvals (replays), state's methods (transaction steps)
    core + approvals + state methods ─> dispatch table ─> Gateway (what transports talk to)

The daemon (``__main__``), the tests and ``kruxosctl`` build it the same way: the CLI's registry is
the daemon's, so ``kruxosctl policy test`` knows every capability, ``state.*`` included. Building
has no effect outside the objects (no file touched, no thread started); :meth:`Parts.start` does
what a serving gateway needs before its first connection.

Where the next features plug in: an MCP endpoint is a transport calling ``Parts.pipeline``; the
service proxies (``proxies/``) add capabilities to the registry and a sweeper started with the
rest; a console is a transport over the operations the CLI uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .approvals.service import ApprovalBook, Approvals
from .capabilities._cgroups import CommandCgroups
from .capabilities._fs_client import FileWork, file_work
from .capabilities.base import Registry, RunAs
from .capabilities.builtin import builtin_capabilities
from .capabilities.workspace import Workspace
from .config import GatewayConfig
from .core.gateway import Gateway, core_methods
from .core.methods import MethodTable
from .core.pipeline import Pipeline, Runtime
from .core.sessions import Sessions
from .policy.gate import PolicyGate
from .policy.rules import Policy, parse_policy
from .proxies.service import Proxies
from .state.service import StateService
from .storage.db import Database


@dataclass(frozen=True)
class Parts:
    """One gateway's parts, for the daemon to start and stop and for tests to look into."""

    config: GatewayConfig
    db: Database
    workspace: Workspace
    policy: PolicyGate
    files: FileWork
    registry: Registry
    pipeline: Pipeline
    approvals: Approvals
    state: StateService
    sessions: Sessions
    gateway: Gateway
    proxies: Proxies | None = None

    async def start(self) -> None:
        """Before serving: clear what a previous gateway left, then start the approvals' sweeps and
        the proxies' (``ConfigError`` if an account's password file is not the gateway's alone)."""
        self.state.start()
        if self.proxies is not None:
            await self.proxies.start()
        await self.approvals.start(self.config.policy.approval_poll_interval)

    async def close(self) -> None:
        """After the transports drained: let approved invocations and proxy deliveries that are
        running finish, then stop the file workers."""
        await self.approvals.close()
        if self.proxies is not None:
            await self.proxies.close()
        await self.files.close()


def build(
    config: GatewayConfig,
    db: Database,
    policy: Policy,
    *,
    run_as: RunAs | None = None,
    cgroups: CommandCgroups | None = None,
) -> Parts:
    """Build every part of a gateway that serves ``config`` from ``db`` under ``policy``."""
    workspace = Workspace(config.workspace.root)
    gate = PolicyGate(policy, Path(config.policy.file), workspace)
    state = StateService(config, db, workspace)
    files = file_work(config, run_as, cgroups)  # nothing starts until a key's first file call
    proxies = Proxies(config, db) if config.email.accounts else None
    registry = Registry(
        [*builtin_capabilities(files), *state.capabilities(), *(proxies.capabilities() if proxies else [])]
    )
    book = ApprovalBook(db, config.policy.approval_timeout)
    pipeline = Pipeline(
        registry,
        gate,
        book,
        Runtime(config, workspace, db, run_as=run_as, cgroups=cgroups),
        observers=[state.record_file_change],
    )
    sessions = Sessions()
    approvals = Approvals(db, pipeline, sessions, config.limits.drain_timeout)
    sessions.on_closed(state.session_closed)
    methods = MethodTable(
        [*core_methods(registry, pipeline), *approvals.methods(), *state.methods(pipeline, registry)]
    )
    return Parts(
        config=config,
        db=db,
        workspace=workspace,
        policy=gate,
        files=files,
        registry=registry,
        pipeline=pipeline,
        approvals=approvals,
        state=state,
        sessions=sessions,
        gateway=Gateway(methods, sessions),
        proxies=proxies,
    )


def registry(config: GatewayConfig) -> Registry:
    """Every capability a gateway built from ``config`` offers, without starting anything (the CLI)."""
    deny_all = parse_policy("version: 1\ndefault: deny\n", "<registry only>")
    return build(config, Database(config.db_path), deny_all).registry
