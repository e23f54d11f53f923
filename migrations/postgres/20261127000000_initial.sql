-- Hush homeserver schema, PostgreSQL dialect. Mirrors ../sqlite/20261127000000_initial.sql.
-- Every table is bounded: by accounts/devices (purged with the device), by a TTL enforced in
-- Store::prune, or by an explicit cap checked in the store.

-- Accounts. Bounded by registration (closed / token / rate-limited).
CREATE TABLE users (
    user_id       TEXT    PRIMARY KEY NOT NULL,
    password_hash TEXT,
    deactivated   BOOLEAN NOT NULL DEFAULT FALSE,
    created_ts    BIGINT  NOT NULL
);

-- Registration tokens, created by the operator.
CREATE TABLE registration_tokens (
    token        TEXT    PRIMARY KEY NOT NULL,
    uses_allowed BIGINT,
    completed    BIGINT  NOT NULL DEFAULT 0,
    expiry_ts    BIGINT,
    created_ts   BIGINT  NOT NULL
);

-- User-interactive auth sessions; pruned by age.
CREATE TABLE uia_sessions (
    session_id TEXT    PRIMARY KEY NOT NULL,
    kind       TEXT    NOT NULL,
    stages     TEXT    NOT NULL DEFAULT '[]',
    params     TEXT    NOT NULL DEFAULT '{}',
    created_ts BIGINT  NOT NULL
);
CREATE INDEX uia_sessions_created ON uia_sessions (created_ts);

-- Devices, their published device keys and the per-device mailbox position counter.
CREATE TABLE devices (
    user_id        TEXT    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    device_id      TEXT    NOT NULL,
    display_name   TEXT,
    last_seen_ip   TEXT,
    last_seen_ts   BIGINT,
    created_ts     BIGINT  NOT NULL,
    device_keys    TEXT,
    inbox_last_pos BIGINT  NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- Access tokens, stored only as SHA-256 hashes. One live token per device.
CREATE TABLE access_tokens (
    token_hash BYTEA    PRIMARY KEY NOT NULL,
    user_id    TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    created_ts BIGINT  NOT NULL,
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

-- Unclaimed one-time keys; `seq` is the upload order used for claiming. Capped per device.
CREATE TABLE one_time_keys (
    seq        BIGSERIAL PRIMARY KEY,
    user_id    TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    algorithm  TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    key_json   TEXT    NOT NULL,
    created_ts BIGINT  NOT NULL,
    UNIQUE (user_id, device_id, algorithm, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX one_time_keys_claim ON one_time_keys (user_id, device_id, algorithm, seq);

-- Recently claimed one-time keys, so a retried upload of a claimed key is not handed out again.
CREATE TABLE claimed_one_time_keys (
    user_id    TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    algorithm  TEXT    NOT NULL,
    key_id     TEXT    NOT NULL,
    key_json   TEXT    NOT NULL,
    claimed_ts BIGINT  NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX claimed_one_time_keys_ts ON claimed_one_time_keys (claimed_ts);

-- Fallback keys: one per device and algorithm.
CREATE TABLE fallback_keys (
    user_id   TEXT    NOT NULL,
    device_id TEXT    NOT NULL,
    algorithm TEXT    NOT NULL,
    key_id    TEXT    NOT NULL,
    key_json  TEXT    NOT NULL,
    used      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, algorithm),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

-- Named counters allocated inside the writing transaction (positions become visible in order).
CREATE TABLE stream_counters (
    name  TEXT    PRIMARY KEY NOT NULL,
    value BIGINT  NOT NULL
);
INSERT INTO stream_counters (name, value) VALUES ('device_list', 0), ('device_list_pruned', 0);

-- Device-list changes; pruned by age (readers older than the horizon get a full answer).
CREATE TABLE device_list_stream (
    pos     BIGINT  PRIMARY KEY NOT NULL,
    user_id TEXT    NOT NULL,
    ts      BIGINT  NOT NULL
);
CREATE INDEX device_list_stream_ts ON device_list_stream (ts);

-- Which users an observer follows; refreshed on use, pruned by age.
CREATE TABLE device_list_interest (
    observer   TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    updated_ts BIGINT  NOT NULL,
    PRIMARY KEY (observer, target)
);
CREATE INDEX device_list_interest_ts ON device_list_interest (updated_ts);

-- To-device mailboxes: positions are per device. Capped per device, pruned by age.
CREATE TABLE to_device_inbox (
    user_id    TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    pos        BIGINT  NOT NULL,
    sender     TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    content    TEXT    NOT NULL,
    created_ts BIGINT  NOT NULL,
    PRIMARY KEY (user_id, device_id, pos),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX to_device_inbox_created ON to_device_inbox (created_ts);

-- Idempotency records of client transactions; pruned by age.
CREATE TABLE txn_ids (
    user_id    TEXT    NOT NULL,
    device_id  TEXT    NOT NULL,
    endpoint   TEXT    NOT NULL,
    txn_id     TEXT    NOT NULL,
    created_ts BIGINT  NOT NULL,
    PRIMARY KEY (user_id, device_id, endpoint, txn_id)
);
CREATE INDEX txn_ids_created ON txn_ids (created_ts);

-- Outbound federation queue: EDUs waiting for a remote server; drained by the sender, pruned by age.
CREATE TABLE federation_outbound (
    id          BIGSERIAL PRIMARY KEY,
    destination TEXT    NOT NULL,
    edu_type    TEXT    NOT NULL,
    content     TEXT    NOT NULL,
    created_ts  BIGINT  NOT NULL
);
CREATE INDEX federation_outbound_dest ON federation_outbound (destination, id);
CREATE INDEX federation_outbound_created ON federation_outbound (created_ts);

-- Per-destination delivery state; idle destinations are pruned.
CREATE TABLE federation_destinations (
    destination     TEXT    PRIMARY KEY NOT NULL,
    retry_count     BIGINT  NOT NULL DEFAULT 0,
    next_attempt_ts BIGINT  NOT NULL DEFAULT 0,
    last_txn_id     TEXT,
    updated_ts      BIGINT  NOT NULL
);
