"""Delivering one buffered message over SMTP, at most once (``smtplib``, run on a worker thread).

:func:`deliver` opens its own connection (implicit TLS or STARTTLS with the system's certificate
authorities and host name checks; plain text only for an account on loopback with ``tls: none``),
logs in, and sends one message. What it returns is the write's next state, by where it stopped:

* before DATA (no connection, TLS, AUTH, MAIL FROM, RCPT TO, the DATA command itself): a ``4xx``
  reply or a network error is ``retry`` (nothing left the gateway); a ``5xx`` is ``failed``, in the
  server's words;
* once the server said 354 and the message's bytes began to go: anything but the server's final
  ``250`` is never retried; a dropped connection or a timeout is ``unknown`` (the server may have
  kept it), a refusal it states is ``failed``.
"""

from __future__ import annotations

import re
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate
from typing import Any, Literal

from ...config import EmailAccountConfig

Next = Literal["sent", "failed", "unknown", "retry"]


@dataclass(frozen=True)
class Outcome:
    """Where a delivery attempt ended: the write's next state, and what happened, in one line."""

    next: Next
    detail: str


def build_message(account: EmailAccountConfig, payload: dict[str, Any], message_id: str) -> bytes:
    """The message's bytes (CRLF line ends), with the Message-ID fixed when it was buffered."""
    msg = EmailMessage(policy=SMTP_POLICY)
    msg["From"] = account.address
    msg["To"] = ", ".join(payload["to"])
    if payload["cc"]:
        msg["Cc"] = ", ".join(payload["cc"])
    msg["Subject"] = payload["subject"]
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = message_id
    msg.set_content(payload["body"])
    return msg.as_bytes()


def _words(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return " ".join(text.split())  # one line, whatever the server sent


def _refused(stage: str, code: int, reply: bytes | str) -> Outcome:
    detail = f"{stage}: the server answered {code} {_words(reply)}"
    return Outcome("retry" if 400 <= code < 500 else "failed", detail)


def _dot_stuffed(data: bytes) -> bytes:
    data = re.sub(rb"(?m)^\.", b"..", data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def deliver(account: EmailAccountConfig, password: str | None, recipients: list[str], data: bytes) -> Outcome:
    """Send ``data`` from the account to ``recipients``; blocking (run it on a thread)."""
    outcome = _deliver(account, password, recipients, data)
    if password:  # the server's words never carry it out, even should a server echo it
        outcome = Outcome(outcome.next, outcome.detail.replace(password, "***"))
    return outcome


def _deliver(
    account: EmailAccountConfig, password: str | None, recipients: list[str], data: bytes
) -> Outcome:
    cfg = account.smtp
    where = f"{cfg.host}:{cfg.effective_port}"
    context = ssl.create_default_context()  # verifies the certificate and the host name
    data_begun = False
    client: smtplib.SMTP | None = None
    try:
        if cfg.tls == "implicit":
            client = smtplib.SMTP_SSL(cfg.host, cfg.effective_port, timeout=cfg.timeout, context=context)
        else:
            client = smtplib.SMTP(cfg.host, cfg.effective_port, timeout=cfg.timeout)
        client.ehlo()
        if cfg.tls == "starttls":
            code, reply = client.starttls(context=context)
            client.ehlo()
        if cfg.user is not None:
            client.login(cfg.user, password or "")
        code, reply = client.mail(account.address)
        if code != 250:
            return _refused("MAIL FROM", code, reply)
        for rcpt in recipients:
            code, reply = client.rcpt(rcpt)
            if code not in (250, 251):
                return _refused(f"RCPT TO {rcpt}", code, reply)
        code, reply = client.docmd("DATA")
        if code != 354:
            return _refused("DATA", code, reply)
        data_begun = True
        client.send(_dot_stuffed(data))
        code, reply = client.getreply()
        if code == 250:
            return Outcome("sent", f"accepted by {where}: {code} {_words(reply)}")
        return Outcome(
            "failed", f"after DATA the server answered {code} {_words(reply)}; not retried (at most once)"
        )
    except smtplib.SMTPResponseException as exc:
        if data_begun:
            return _unknown(where, exc)
        return _refused("the session", exc.smtp_code, exc.smtp_error)
    except ssl.SSLCertVerificationError as exc:
        return Outcome("failed", f"{where}: the server's TLS certificate was refused: {exc.verify_message}")
    except smtplib.SMTPNotSupportedError as exc:
        return Outcome("failed", f"{where}: {exc}")
    except (OSError, smtplib.SMTPException) as exc:
        if data_begun:
            return _unknown(where, exc)
        return Outcome("retry", f"{where}: {type(exc).__name__}: {exc}")
    except Exception as exc:  # e.g. a text smtplib cannot encode: nothing was sent before DATA
        if data_begun:
            return _unknown(where, exc)
        return Outcome("failed", f"{where}: {type(exc).__name__}: {exc}")
    finally:
        if client is not None:
            _quit(client)


def _unknown(where: str, exc: BaseException) -> Outcome:
    return Outcome(
        "unknown",
        f"{where}: the connection failed after DATA began ({type(exc).__name__}: {exc}); the message may "
        "or may not have been delivered, and is not sent again",
    )


def _quit(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        client.close()
