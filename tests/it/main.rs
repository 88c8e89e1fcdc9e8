//! Integration tests: they drive the real `ferry` binary.

mod build;
mod golden;
mod kit;
mod read;
mod venv;
