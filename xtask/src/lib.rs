//! The reusable parts of the project's tasks, so tests can drive them directly.

pub mod parity;
