"""Packaging: the wheels and the import graph."""
