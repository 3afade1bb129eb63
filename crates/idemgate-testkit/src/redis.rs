//! Private redis-server instances (written with the Redis store).
