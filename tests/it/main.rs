//! Integration tests: they drive the real `ferry` binary.

mod agent;
mod build;
mod cli_output;
mod golden;
mod host;
mod hostile;
mod kit;
mod read;
mod rsync;
mod runtime;
mod source;
mod ssh;
mod stages;
mod testhosts;
mod truth;
mod venv;
