//! `hushd`, the Hush homeserver (placeholder; filled in by the homeserver foundation work).

fn main() {}
