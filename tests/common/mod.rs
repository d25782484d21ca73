//! Shared helpers for the integration tests, by concern:
//! - [`server`]: the real server binary on port 0 (`Server`), its configuration files, the
//!   ways it refuses to start, and its `/metrics`;
//! - [`client`]: a minimal HTTP/1.1 client (raw bytes, so tests control pipelining and
//!   `Expect`) and the sockets it leaves;
//! - [`garage`]: a real Garage (one per test binary), key prefixes, the objects read back;
//! - [`load`]: numbered payloads, the background load that sends them, and the check of what
//!   the store holds against what the clients were told;
//! - [`disk`]: files under a directory and loop-device file systems (full disks, power cuts);
//! - [`fault_proxy`]: a fault-injecting proxy between corepost and Garage.
//!
//! Tests say `mod common; use common::*;`: everything but the fault proxy is re-exported here.
#![allow(dead_code)]

pub mod client;
pub mod disk;
pub mod fault_proxy;
pub mod garage;
pub mod load;
pub mod server;

// A test binary that uses nothing of a module (admin.rs: no numbered load) would warn.
#[allow(unused_imports)]
pub use {client::*, disk::*, garage::*, load::*, server::*};

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const BODY10: &[u8] = include_bytes!("../../benches/workload/body10.json");

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Polls until `f` is true (panics after `secs`).
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
