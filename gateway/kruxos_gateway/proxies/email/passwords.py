"""The accounts' passwords: files only the gateway's user can read, checked at start, read when used.

A password is read when a message is sent (a changed file takes effect at the next send) and goes
nowhere but the SMTP AUTH command: not into results, errors, logs or the audit log.
"""

from __future__ import annotations

import os
import stat

from ...config import EmailAccountConfig, EmailConfig
from ...errors import ConfigError


def check_password_files(config: EmailConfig) -> None:
    """Refuse (``ConfigError``, one line) a password file that is missing, unreadable, or readable by
    its group or others."""
    for account in config.accounts:
        where = f"email.accounts[{account.name}].password_file"
        path = account.password_file
        if path is None:
            if account.smtp.user is not None:
                raise ConfigError(
                    f"email.accounts[{account.name}]: smtp.user is set but password_file is not"
                )
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{where}: {path} is not a regular file")
        if st.st_mode & 0o077:
            raise ConfigError(
                f"{where}: {path} is readable by others than its owner (mode {stat.S_IMODE(st.st_mode):04o});"
                f" run chmod 600 {path}"
            )
        if not os.access(path, os.R_OK):
            raise ConfigError(f"{where}: {path} is not readable by the gateway's user")


def read_password(account: EmailAccountConfig) -> str | None:
    """The account's password (the file's text without its final line break); blocking."""
    if account.password_file is None:
        return None
    with open(account.password_file, encoding="utf-8") as f:
        return f.read().rstrip("\r\n")
