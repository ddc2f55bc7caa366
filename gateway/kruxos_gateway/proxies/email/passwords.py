"""The accounts' passwords, by the names the proxy has always called: kept so that callers of
``check_password_files``/``read_password`` go on working; the rules are in ``credentials.py``
(a password file or a systemd credential)."""

from __future__ import annotations

from ...config import EmailAccountConfig, EmailConfig
from . import credentials


def check_password_files(config: EmailConfig) -> None:
    """Refuse (``ConfigError``, one line) a secret that is missing or readable by others."""
    credentials.check_credentials(config)


def read_password(account: EmailAccountConfig) -> str | None:
    """The account's password (password file or systemd credential); blocking."""
    return credentials.read_secret(account)
