//! Password hashing (argon2id), run off the async runtime.
