"""The email replica's SQLite tables: the mailboxes' sync state, the messages, their full-text index.

The replica lives in a database file of its own (``mail.db`` beside ``gateway.db``), with its own
writer thread: a sync of ten thousand messages must not queue the agents' state writes and audit
records behind it, and a mailbox flooded by a sender must not slow the gateway's other storage.

One row per message *per mailbox*, keyed by ``(account, mailbox, uid)`` within the mailbox's current
``uidvalidity``: IMAP names a message only by its UID in one mailbox, so a message in two mailboxes
is two rows (with the same ``message_id`` and ``thread_id``). ``id`` is the replica's own name for a
row, which agents get as ``id`` (``email.read``); it is never reused, so a stale id cannot name
another message after an expunge.

Text comes from the mail server, that is from anyone who can send mail: it is stored as given and
only ever handed to agents marked as untrusted content.

This module imports nothing, like ``proxies/schema.py``.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS mail_mailboxes (
    account TEXT NOT NULL,
    name TEXT NOT NULL,                 -- the mailbox's IMAP name, decoded (e.g. INBOX, Archive/2026)
    uidvalidity INTEGER,                -- NULL until the first sync
    uidnext INTEGER,
    highestmodseq INTEGER,              -- NULL when the server has no CONDSTORE
    synced_at REAL,                     -- when the last sync of this mailbox finished (epoch seconds)
    last_error TEXT,                    -- why the last attempt failed, NULL after a success
    messages INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account, name)
);

CREATE TABLE IF NOT EXISTS mail_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- AUTOINCREMENT: an expunged message's id is never reused
    account TEXT NOT NULL,
    mailbox TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    modseq INTEGER,
    message_id TEXT,                    -- the Message-ID header, without <>
    thread_id TEXT NOT NULL,            -- the Message-ID of the thread's root (References' first, else own)
    in_reply_to TEXT,
    refs TEXT NOT NULL DEFAULT '',      -- the References header's ids, space separated
    from_name TEXT NOT NULL DEFAULT '',
    from_addr TEXT NOT NULL DEFAULT '', -- lower case
    to_addrs TEXT NOT NULL DEFAULT '[]',  -- JSON array of "Name <addr>" strings as sent
    cc_addrs TEXT NOT NULL DEFAULT '[]',
    subject TEXT NOT NULL DEFAULT '',
    date REAL,                          -- the Date header (epoch seconds), NULL when missing or bad
    internal_date REAL NOT NULL,        -- the server's INTERNALDATE (epoch seconds)
    size INTEGER NOT NULL DEFAULT 0,
    flags TEXT NOT NULL DEFAULT '',     -- IMAP flags, space separated, e.g. "\\Seen \\Flagged"
    seen INTEGER NOT NULL DEFAULT 0,    -- \\Seen, kept apart for is:read/is:unread
    flagged INTEGER NOT NULL DEFAULT 0, -- \\Flagged
    has_attachments INTEGER NOT NULL DEFAULT 0,
    attachments TEXT NOT NULL DEFAULT '[]',  -- JSON array of {filename, content_type, size, part}
    body_text TEXT NOT NULL DEFAULT '',      -- the text body (HTML converted to text), bounded
    snippet TEXT NOT NULL DEFAULT '',
    UNIQUE (account, mailbox, uid)
);
CREATE INDEX IF NOT EXISTS mail_messages_date ON mail_messages(account, date);
CREATE INDEX IF NOT EXISTS mail_messages_thread ON mail_messages(thread_id);
CREATE INDEX IF NOT EXISTS mail_messages_message_id ON mail_messages(message_id);

-- External-content FTS5 over mail_messages, kept in step by the triggers below. unicode61 with
-- diacritics removed: "resume" finds "résumé", as users expect from a mail client's search.
CREATE VIRTUAL TABLE IF NOT EXISTS mail_fts USING fts5(
    subject, from_text, to_text, body_text,
    content='mail_messages', content_rowid='id',
    tokenize='unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS mail_messages_ai AFTER INSERT ON mail_messages BEGIN
    INSERT INTO mail_fts(rowid, subject, from_text, to_text, body_text)
    VALUES (new.id, new.subject, new.from_name || ' ' || new.from_addr,
            new.to_addrs || ' ' || new.cc_addrs, new.body_text);
END;
CREATE TRIGGER IF NOT EXISTS mail_messages_ad AFTER DELETE ON mail_messages BEGIN
    INSERT INTO mail_fts(mail_fts, rowid, subject, from_text, to_text, body_text)
    VALUES ('delete', old.id, old.subject, old.from_name || ' ' || old.from_addr,
            old.to_addrs || ' ' || old.cc_addrs, old.body_text);
END;
-- Flags change often and are not indexed: only a change of indexed text rewrites the index.
CREATE TRIGGER IF NOT EXISTS mail_messages_au AFTER UPDATE OF subject, from_name, from_addr,
        to_addrs, cc_addrs, body_text ON mail_messages BEGIN
    INSERT INTO mail_fts(mail_fts, rowid, subject, from_text, to_text, body_text)
    VALUES ('delete', old.id, old.subject, old.from_name || ' ' || old.from_addr,
            old.to_addrs || ' ' || old.cc_addrs, old.body_text);
    INSERT INTO mail_fts(rowid, subject, from_text, to_text, body_text)
    VALUES (new.id, new.subject, new.from_name || ' ' || new.from_addr,
            new.to_addrs || ' ' || new.cc_addrs, new.body_text);
END;
"""
