"""The gateway's version, reported in `hello` frames and by `GET /health`."""

__version__ = "0.1.0"
PROTOCOL = "kruxos.v1"
