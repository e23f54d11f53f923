-- Never holds a row. The one-command group commit inserts a 0 here when a batch would fill a
-- recipient's mailbox beyond the cap; the CHECK refuses it, which aborts the command before its
-- COMMIT, and the batch is decided request by request instead (server/src/store/mailbox/
-- sqlite_commit.rs).
CREATE TABLE mailbox_cap_guard (
    within_cap INTEGER NOT NULL CHECK (within_cap = 1)
);
