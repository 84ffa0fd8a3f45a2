//! End-to-end tests: real `cue` daemons syncing through a real `cue-relay` on 127.0.0.1,
//! driven exactly by the commands of docs/reference.md §1. One test binary, one module per
//! concern; the harness is the `cue_e2e` library.

#![allow(clippy::unwrap_used)] // tests fail by panicking

mod cli;
mod devices;
mod exfat;
mod faults;
mod fleet;
mod history;
mod modes;
mod names;
mod overlap;
mod robustness;
mod rules;
mod sync;
mod terminal;
