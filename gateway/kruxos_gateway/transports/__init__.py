"""How agents reach the gateway: the HTTP server on port 7700 and the ``kruxos.v1`` WebSocket it
upgrades to, with admission and rate limits. Transports turn bytes into calls of the core."""
