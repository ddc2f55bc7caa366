"""The email proxy: ``email.send`` buffers a message; :meth:`EmailProxy.deliver` sends it when due.

The message is checked when it is buffered (addresses, header text, sizes), its Message-ID fixed
then, and the payload stored is all that delivery needs besides the account's password, which is
read only on the delivery thread (``credentials.py``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from email.headerregistry import Address
from email.utils import getaddresses, make_msgid, parseaddr
from typing import Any

from pydantic import Field

from ...capabilities.base import Capability, Context, define
from ...capabilities.inputs import Inputs
from ...config import EmailAccountConfig, EmailConfig
from ...errors import InvalidInput, TooLarge
from ..buffer import Write, iso
from . import credentials, smtp

#: Buffers a write: (ctx, proxy, kind, payload, message_id, window) -> the pending write.
BufferWrite = Callable[[Context, str, str, dict[str, Any], str, float], Awaitable[Write]]

_FORBIDDEN = {chr(c) for c in range(32) if chr(c) != "\t"} | {"\x7f"}


class SendInputs(Inputs):
    to: str | list[str] = Field(description='Recipient address(es), e.g. "ana@example.com".')
    subject: str = Field(description="The subject line (one line).")
    body: str = Field(description="The message text (plain text).")
    cc: str | list[str] = Field(default_factory=list, description="Copy recipient address(es).")
    account: str | None = Field(
        default=None, description="The configured account to send from; may be omitted when there is one."
    )


def _header_text(name: str, value: str) -> None:
    if any(ch in _FORBIDDEN for ch in value):
        raise InvalidInput(
            name,
            f"input {name!r} contains a line break or control character",
            f"pass {name} as one line of text without CR, LF or other control characters",
        )


def _addresses(name: str, value: str | list[str]) -> list[str]:
    """The addresses as given, each checked to be exactly one address without CR/LF."""
    values = [value] if isinstance(value, str) else value
    for address in values:
        _header_text(name, address)
        _, spec = parseaddr(address)
        valid = len(getaddresses([address])) == 1 and spec.count("@") == 1
        if valid:
            try:
                Address(addr_spec=spec)
            except (ValueError, IndexError):
                valid = False
        if valid and not spec.isascii():
            raise InvalidInput(
                name,
                f"input {name!r}: {address!r} is not an ASCII address; internationalised addresses "
                "(SMTPUTF8) are not supported yet",
                f"pass {name} as an address in ASCII (a name with other characters may go before <...>)",
            )
        if not valid:
            raise InvalidInput(
                name,
                f"input {name!r}: {address!r} is not one email address",
                f'pass {name} as addresses like "ana@example.com" or "Ana <ana@example.com>", one per item',
            )
    return list(values)


def envelope_recipients(payload: dict[str, Any]) -> list[str]:
    return [parseaddr(a)[1] for a in [*payload["to"], *payload["cc"]]]


class EmailProxy:
    """The ``email`` proxy of one gateway: its capability and its delivery."""

    name = "email"

    def __init__(self, config: EmailConfig, buffer_write: BufferWrite) -> None:
        self.config = config
        self.buffer_write = buffer_write

    def capabilities(self) -> list[Capability]:
        return [
            Capability(
                define(
                    "email",
                    "send",
                    ["write", "email", "buffered"],
                    "Send an email from a configured account, after a cancellation window.",
                    "To send mail for the user. The message waits in the gateway's buffer for the window "
                    "(buffer_until) and can be taken back with proxy.cancel_write until then.",
                    SendInputs,
                    [
                        ("write_id", "string", "The buffered write, for proxy.cancel_write."),
                        ("buffer_until", "string", "When it will be sent (ISO 8601, UTC)."),
                        ("message_id", "string", "The Message-ID header the message will carry."),
                        ("state", "string", "pending"),
                    ],
                    "network",
                ),
                self._send,
                SendInputs,
            )
        ]

    def _account(self, name: str | None) -> EmailAccountConfig:
        if name is None:
            if len(self.config.accounts) == 1:
                return self.config.accounts[0]
            names = ", ".join(a.name for a in self.config.accounts)
            raise InvalidInput(
                "account", "more than one account is configured", f"pass account: one of {names}"
            )
        account = self.config.account(name)
        if account is None:
            names = ", ".join(a.name for a in self.config.accounts)
            raise InvalidInput(
                "account", f"no email account is named {name!r}", f"pass account: one of {names}"
            )
        return account

    async def _send(self, ctx: Context, inputs: dict[str, Any]) -> dict[str, Any]:
        account = self._account(inputs["account"])
        to = _addresses("to", inputs["to"])
        cc = _addresses("cc", inputs["cc"])
        if not to:
            raise InvalidInput("to", "no recipient", 'pass to: at least one address, e.g. "ana@example.com"')
        if len(to) + len(cc) > self.config.max_recipients:
            raise InvalidInput(
                "to",
                f"{len(to) + len(cc)} recipients; at most {self.config.max_recipients} are allowed",
                "send to fewer recipients (email.max_recipients)",
            )
        _header_text("subject", inputs["subject"])
        size = len(inputs["body"].encode("utf-8", "surrogatepass"))
        if size > self.config.max_body_bytes:
            raise TooLarge(
                f"the body is {size} bytes; at most {self.config.max_body_bytes} are allowed",
                recovery=[("shorten", "send a shorter body (email.max_body_bytes)")],
                details={"size": size, "limit": self.config.max_body_bytes},
            )
        payload = {
            "account": account.name,
            "to": to,
            "cc": cc,
            "subject": inputs["subject"],
            "body": inputs["body"],
        }
        message_id = make_msgid(domain=account.address.rpartition("@")[2])
        write = await self.buffer_write(ctx, self.name, "send", payload, message_id, self.config.send_window)
        return {
            "write_id": write.write_id,
            "buffer_until": iso(write.buffer_until),
            "message_id": write.message_id,
            "state": write.state,
        }

    async def deliver(self, write: Write) -> smtp.Outcome:
        """Send a write that was started (``sending``); what happened."""
        account = self.config.account(write.payload["account"])
        if account is None:
            return smtp.Outcome("failed", f"the account {write.payload['account']!r} is no longer configured")

        def run() -> smtp.Outcome:
            try:
                password = credentials.read_secret(account)
            except OSError as exc:
                return smtp.Outcome(
                    "retry", f"cannot read the account's password (file or credential): {exc.strerror}"
                )
            data = smtp.build_message(account, write.payload, write.message_id)
            return smtp.deliver(account, password, envelope_recipients(write.payload), data)

        return await asyncio.to_thread(run)
