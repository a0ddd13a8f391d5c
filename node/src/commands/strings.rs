//! Keyed string commands (GET, SET, INCR family, APPEND, GETRANGE, SETRANGE, ...).
