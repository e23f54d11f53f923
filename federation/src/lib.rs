//! Hush's shared protocol layer (placeholder; filled in by the federation work).
