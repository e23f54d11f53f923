-- The transaction each destination has in flight: written before its first attempt, so a
-- restarted sender retries exactly the same txnId with exactly the same EDUs. At most one row
-- per destination; deleted (with the EDUs it carries) when the destination answers 200.
CREATE TABLE federation_txn_inflight (
    destination TEXT    PRIMARY KEY NOT NULL,
    txn_id      TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    edu_ids     TEXT    NOT NULL,
    edu_count   INTEGER NOT NULL,
    created_ts  INTEGER NOT NULL
);
