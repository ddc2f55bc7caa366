"""The KruxOS test suite; shared helpers in ``helpers.py``."""
