"""``alerts.send``: tell the people supervising the appliance; stored and written to the journal."""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal, get_args

from pydantic import Field

from ..core.models import CapabilityDefinition, OutputSpec
from ..storage import store
from .base import Capability, Context
from .inputs import Inputs, declared

Severity = Literal["info", "warning", "error", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
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


class SendInputs(Inputs):
    severity: Severity = Field(description="One of " + ", ".join(SEVERITIES) + ".")
    title: str = Field(description="A one-line summary.")
    message: str = Field(description="The details.")


CAPABILITIES = [
    Capability(
        CapabilityDefinition(
            name="alerts.send",
            category="alerts",
            tags=["notify"],
            purpose="Send an alert to the people supervising this appliance.",
            when_to_use="When something needs a person's attention: a failure you cannot fix, or a result.",
            inputs=declared(SendInputs),
            outputs=[
                OutputSpec(name="alert_id", type="string", description="The stored alert's id."),
                OutputSpec(name="created_at", type="string", description="When it was stored, ISO 8601 UTC."),
            ],
            permission_tier="notify",
        ),
        _send,
        SendInputs,
    )
]
