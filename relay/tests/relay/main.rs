//! Integration tests of the relay over real sockets on 127.0.0.1: one test binary, one
//! module per concern (ripgrep's layout), shared helpers in `util`.

// Tests read best as "the defaults, but with this one limit changed".
#![allow(clippy::field_reassign_with_default)]
// A test's helpers fail the test by panicking, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod dockerfile;
mod http;
mod join;
mod limits;
mod memory;
mod robustness;
mod shutdown;
mod util;
