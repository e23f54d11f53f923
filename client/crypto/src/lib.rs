//! Hush end-to-end encryption core (placeholder; filled in by the E2EE core work).
