"""Tests of the KruxOS gateway (gateway/kruxos_gateway): specifications, one behaviour per test."""
