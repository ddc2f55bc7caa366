"""An account's secret comes from exactly one place, a password file or a systemd credential
($CREDENTIALS_DIRECTORY), is checked at start with one-line errors, and logs in to a real SMTP server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from kruxos_gateway.config import EmailAccountConfig, parse_config
from kruxos_gateway.errors import ConfigError
from kruxos_gateway.proxies.email import credentials, smtp

from .email_support import AIOSMTPD_WARNING, PASSWORD, USER, smtp_server

pytestmark = pytest.mark.filterwarnings(AIOSMTPD_WARNING)


def _config(tmp_path: Path, port: int, secret: str) -> str:
    return (
        f"state_dir: {tmp_path}\nworkspace: {{root: {tmp_path}}}\n"
        "email:\n  accounts:\n  - name: work\n    address: agent@kruxos.test\n"
        f"    smtp: {{host: 127.0.0.1, port: {port}, tls: none, user: {USER}}}\n"
        f"    {secret}\n"
    )


def _account(tmp_path: Path, secret: str, port: int = 2525) -> EmailAccountConfig:
    return parse_config(_config(tmp_path, port, secret)).email.accounts[0]


def _credentials_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "mail-work") -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    (directory / name).write_text(PASSWORD)  # systemd writes it as given, without a line break
    (directory / name).chmod(0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_a_password_file_and_a_credential_together_are_refused(tmp_path: Path) -> None:
    text = _config(tmp_path, 2525, "password_file: /etc/x\n    credential: mail-work")
    with pytest.raises(ConfigError, match=r"email.accounts.0: .*password_file or credential, not both"):
        parse_config(text)


def test_a_credential_name_with_a_slash_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"email.accounts.0.credential: String should match"):
        parse_config(_config(tmp_path, 2525, "credential: ../etc/shadow"))


def test_a_credential_without_credentials_directory_names_the_unit_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = parse_config(_config(tmp_path, 2525, "credential: mail-work"))
    with pytest.raises(ConfigError, match=r"^email.accounts\[work\].credential: .*LoadCredential=mail-work:"):
        credentials.check_credentials(config.email)


def test_a_missing_credential_is_refused_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _credentials_directory(tmp_path, monkeypatch, name="other")
    config = parse_config(_config(tmp_path, 2525, "credential: mail-work"))
    with pytest.raises(ConfigError, match=r"no readable credential 'mail-work'") as caught:
        credentials.check_credentials(config.email)
    assert "\n" not in str(caught.value)


def test_a_user_without_any_secret_is_refused_at_start(tmp_path: Path) -> None:
    config = parse_config(_config(tmp_path, 2525, "address: agent@kruxos.test"))
    with pytest.raises(ConfigError, match=r"neither password_file nor credential"):
        credentials.check_credentials(config.email)


def test_a_credential_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _credentials_directory(tmp_path, monkeypatch)
    account = _account(tmp_path, "credential: mail-work")
    credentials.check_credentials(parse_config(_config(tmp_path, 2525, "credential: mail-work")).email)
    assert credentials.read_secret(account) == PASSWORD


@pytest.mark.asyncio
async def test_a_credential_logs_in_to_a_real_smtp_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _credentials_directory(tmp_path, monkeypatch)
    async with smtp_server() as (inbox, port):
        account = _account(tmp_path, "credential: mail-work", port)
        secret = credentials.read_secret(account)
        data = b"Subject: hi\r\n\r\nhello\r\n"
        outcome = await asyncio.to_thread(smtp.deliver, account, secret, ["ana@example.com"], data)
    assert outcome.next == "sent"
    assert inbox.logins == [(USER.encode(), PASSWORD.encode())]


@pytest.mark.asyncio
async def test_a_wrong_credential_fails_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = _credentials_directory(tmp_path, monkeypatch)
    wrong = "Wr0ng-Distinctive-Secret-77"
    (directory / "mail-work").chmod(0o600)
    (directory / "mail-work").write_text(wrong)
    async with smtp_server() as (_inbox, port):
        account = _account(tmp_path, "credential: mail-work", port)
        outcome = await asyncio.to_thread(
            smtp.deliver, account, credentials.read_secret(account), ["ana@example.com"], b"x\r\n"
        )
    assert outcome.next == "failed"
    assert "535" in outcome.detail
    assert wrong not in outcome.detail
