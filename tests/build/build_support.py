"""Shared constants of the fast image-builder tests (uniquely named: both test folders have a conftest)."""

from __future__ import annotations

from ..helpers import ROOT

__all__ = ["OPERATOR_KEY", "ROOT"]

OPERATOR_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeOperatorKeyForTests0123456789abcdef operator@example"
