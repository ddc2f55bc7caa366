"""Tests of the SDK against a scripted fake gateway."""
