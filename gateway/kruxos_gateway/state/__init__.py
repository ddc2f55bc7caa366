"""Agent state: session (in memory), persistent (versioned, per API key), shared (optimistic locking,
ordered watches), transactions (compensation) and briefings. See docs/gateway.md, *Agent state*.

``app.Gateway`` builds one ``service.StateService``. This package module imports nothing, so that the
protocol core (``state.methods``) and the store (``state.schema``) can use its leaf modules.
"""
