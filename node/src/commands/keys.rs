//! Keyed key-space commands (TYPE, EXPIRE family, TTL family, PERSIST, OBJECT, MOVE, ...).
