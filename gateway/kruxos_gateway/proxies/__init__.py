"""Service proxies: agents use outside services (email first) through the gateway, which holds the
credentials and buffers every write so that it can be cancelled before it leaves (docs/email.md)."""
