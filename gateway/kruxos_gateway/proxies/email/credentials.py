"""Where an account's secret comes from: exactly one of a password file or a systemd credential.

* ``password_file``: a regular file only its owner (the gateway's user) can read, checked at start;
* ``credential: NAME``: a systemd credential the gateway's unit loads (``LoadCredential=`` or
  ``LoadCredentialEncrypted=``); systemd places it in ``$CREDENTIALS_DIRECTORY``, a directory only the
  service's user can read, gone when the service stops.

The secret is read when it is used (a changed file takes effect at the next login) and goes nowhere
but the login command (SMTP AUTH): not into results, errors, logs or the audit log.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ...config import EmailAccountConfig, EmailConfig
from ...errors import ConfigError


def _credential_path(account: EmailAccountConfig) -> Path | None:
    """The systemd credential's file, or None when the account names none; ConfigError when the
    gateway runs without credentials (no $CREDENTIALS_DIRECTORY)."""
    if account.credential is None:
        return None
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            f"email.accounts[{account.name}].credential: $CREDENTIALS_DIRECTORY is not set; add"
            f" LoadCredential={account.credential}:<file> (or LoadCredentialEncrypted=) to the gateway's unit"
        )
    return Path(directory) / account.credential


def check_credentials(config: EmailConfig) -> None:
    """Refuse (``ConfigError``, one line) a secret that is missing, unreadable, or a password file
    readable by its group or others."""
    for account in config.accounts:
        if account.credential is not None:
            _check_credential(account)
        elif account.password_file is not None:
            _check_password_file(account, account.password_file)
        elif account.smtp.user is not None:
            raise ConfigError(
                f"email.accounts[{account.name}]: smtp.user is set but neither password_file"
                " nor credential is"
            )


def _check_credential(account: EmailAccountConfig) -> None:
    path = _credential_path(account)
    assert path is not None
    where = f"email.accounts[{account.name}].credential"
    if not os.access(path, os.R_OK):
        raise ConfigError(
            f"{where}: no readable credential {account.credential!r} in $CREDENTIALS_DIRECTORY; check"
            f" LoadCredential={account.credential}:... in the gateway's unit"
        )


def _check_password_file(account: EmailAccountConfig, path: Path) -> None:
    where = f"email.accounts[{account.name}].password_file"
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


def read_secret(account: EmailAccountConfig) -> str | None:
    """The account's password (the file's text without its final line break), or None when it has
    none; blocking. ``OSError`` when the file went away since start."""
    path = _credential_path(account) or account.password_file
    if path is None:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read().rstrip("\r\n")
