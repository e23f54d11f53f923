-- Local client store. Secrets (account, sessions, access token, message bodies) are stored
-- only as AEAD ciphertext under the data key; see docs/client.md.
CREATE TABLE meta (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE account (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    blob BLOB NOT NULL
);

CREATE TABLE sessions (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    ed25519 TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    approved INTEGER NOT NULL,
    active INTEGER NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE verified_users (
    user_id TEXT PRIMARY KEY NOT NULL,
    verified_at INTEGER NOT NULL
);

CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    peer TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    sender_user TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    ts INTEGER NOT NULL,
    state TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX messages_by_peer ON messages (peer, seq);

CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    txn_id TEXT NOT NULL UNIQUE,
    msg_id TEXT NOT NULL,
    messages TEXT NOT NULL
);

CREATE TABLE seen (
    digest BLOB PRIMARY KEY NOT NULL,
    ts INTEGER NOT NULL
);

CREATE TABLE notices (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    text TEXT NOT NULL
);
