//! Integration tests: they drive the real `ferry` binary.

mod agent;
mod build;
mod cli_output;
mod crash;
mod flip;
mod golden;
mod hostile;
mod kit;
mod lb;
mod lb_config;
mod lb_faults;
mod lbkit;
mod linked;
mod load;
mod local_fleet;
mod read;
mod rsync;
mod runtime;
mod snapshots;
mod source;
mod ssh;
mod stages;
mod staging;
mod testhosts;
mod truth;
mod venv;
