"""Booted-image tests (QEMU)."""
