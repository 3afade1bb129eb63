//! Private PostgreSQL instances (written with the PostgreSQL store).
