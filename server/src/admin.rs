//! `hushd admin ...`: operator commands that act on the configured database.
