-- Local metadata at rest (docs/client.md, "What is on disk"): who talks to whom and when is
-- no longer readable from the store file. Peers appear only as keyed tags (HMAC-SHA256 under
-- a key derived from the data key); everything else about a row is sealed under the field key.
-- The old tables are renamed to legacy_*; the client converts their rows (it needs the unlocked
-- keys to do so) and drops them the first time the store is opened.

ALTER TABLE sessions RENAME TO legacy_sessions;
ALTER TABLE devices RENAME TO legacy_devices;
ALTER TABLE verified_users RENAME TO legacy_verified_users;
ALTER TABLE messages RENAME TO legacy_messages;
ALTER TABLE outbox RENAME TO legacy_outbox;
ALTER TABLE seen RENAME TO legacy_seen;
ALTER TABLE notices RENAME TO legacy_notices;
DROP INDEX messages_by_peer;

-- Session records: tag of (user, device); `stamp` is random per write, so a reader that cached
-- the decrypted record knows whether the row is still the one it wrote.
CREATE TABLE sessions (
    peer_tag BLOB PRIMARY KEY NOT NULL,
    generation INTEGER NOT NULL,
    stamp INTEGER NOT NULL,
    blob BLOB NOT NULL
);

-- Trust pins: sealed (user, device, identity key, first seen, approved, active).
CREATE TABLE devices (
    user_tag BLOB NOT NULL,
    device_tag BLOB NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (user_tag, device_tag)
);

CREATE TABLE verified_users (
    user_tag BLOB PRIMARY KEY NOT NULL,
    blob BLOB NOT NULL
);

-- History: sealed (message id, peer, direction, sender, time, state, body).
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_tag BLOB NOT NULL UNIQUE,
    peer_tag BLOB NOT NULL,
    blob BLOB NOT NULL
);
CREATE INDEX messages_by_peer_tag ON messages (peer_tag, seq);

-- Outbox: the request body (addressed to user and device IDs) and the message id, sealed.
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL UNIQUE,
    blob BLOB NOT NULL
);

-- Keyed digests of received events; no time (pruned by age of insertion order instead).
CREATE TABLE seen (
    digest BLOB PRIMARY KEY NOT NULL
);

CREATE TABLE notices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    blob BLOB NOT NULL
);
