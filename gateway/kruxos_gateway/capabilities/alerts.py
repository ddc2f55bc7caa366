"""``alerts.send``: tell the people supervising the appliance; stored and written to the journal."""

from __future__ import annotations

import functools
import logging
from typing import Any

from ..core.models import CapabilityDefinition, InputSpec, OutputSpec
from ..storage import store
from .base import Capability, Context

SEVERITIES = ("info", "warning", "error", "critical")
_LEVELS = {
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
log = logging.getLogger("kruxos_gateway.alerts")


async def _send(ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
    record = await ctx.db.run(
        functools.partial(
            store.insert_alert,
            key_name=ctx.key_name,
            severity=inputs["severity"],
            title=inputs["title"],
            message=inputs["message"],
        )
    )
    log.log(
        _LEVELS[record.severity],
        "alert %s [%s] from %s: %s: %s",
        record.alert_id,
        record.severity,
        record.key_name,
        record.title,
        record.message,
    )
    return {"alert_id": record.alert_id, "created_at": record.ts}


CAPABILITIES = [
    Capability(
        CapabilityDefinition(
            name="alerts.send",
            category="alerts",
            tags=["notify"],
            purpose="Send an alert to the people supervising this appliance.",
            when_to_use="When something needs a person's attention: a failure you cannot fix, or a result.",
            inputs=[
                InputSpec(
                    name="severity",
                    type="string",
                    required=True,
                    choices=SEVERITIES,
                    description="One of " + ", ".join(SEVERITIES) + ".",
                ),
                InputSpec(name="title", type="string", required=True, description="A one-line summary."),
                InputSpec(name="message", type="string", required=True, description="The details."),
            ],
            outputs=[
                OutputSpec(name="alert_id", type="string", description="The stored alert's id."),
                OutputSpec(name="created_at", type="string", description="When it was stored, ISO 8601 UTC."),
            ],
            permission_tier="notify",
        ),
        _send,
    )
]
