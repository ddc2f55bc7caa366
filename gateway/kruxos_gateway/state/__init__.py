"""Agent state: session (in memory), persistent (versioned, per API key), shared (optimistic locking,
ordered watches), transactions (compensation) and briefings. See docs/gateway.md, *Agent state*.

The composition root (``compose.py``) builds one ``service.StateService``. This package module imports
nothing, so that the store (``state.schema``) can use its leaf modules without the service.
"""
