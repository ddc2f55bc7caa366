"""The embedded SQLite database (``db``: one writer thread, group commit, readers) and the gateway's
own records in it (``store``: schema, API keys, audit)."""
