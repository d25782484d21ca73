//! A start that fails part-way through (a later shard cannot open its spool) returns the
//! error and stops the shards that were already serving, as a first signal would: nothing
//! keeps listening for a server its caller was told did not start.

use corepost::config::{Ack, Config, Cores, SinkKind};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

#[test]
fn a_shard_that_cannot_start_stops_the_shards_already_serving() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    std::fs::create_dir_all(&spool).unwrap();
    // Shard 1's spool directory is a file: shard 0 starts and serves, shard 1 cannot.
    std::fs::write(spool.join("shard-1"), b"not a directory").unwrap();
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut config = Config::default();
    config.server.listen = format!("127.0.0.1:{port}");
    config.server.ack = Ack::Durable;
    config.sink.kind = SinkKind::Discard;
    config.shards.cores = Cores::Count(2);
    config.spool.dir = spool.to_string_lossy().into_owned();
    config.upload.spill_dir = dir.path().join("spill").to_string_lossy().into_owned();
    config.server.shutdown_grace_ms = 100;
    let err = corepost::shard::start(config).expect_err("shard 1 cannot open its spool");
    assert!(err.to_string().contains("shard-1"), "{err}");
    // Shard 0 was listening; once its shutdown has begun it closes its listener.
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "shard 0 still accepts connections for a server that did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
