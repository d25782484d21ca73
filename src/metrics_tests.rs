//! Tests of `metrics` (a file of their own to keep `metrics.rs` short).
use super::*;

#[test]
fn renders_per_shard_values() {
    let views: Vec<_> = (0..2)
        .map(|_| ShardView {
            spool: Default::default(),
            stats: Arc::new(ShardStats::default()),
            budget: Arc::new(Budget::new(10, 100)),
            max_connections: 5,
        })
        .collect();
    views[1].stats.request(Route::Payloads, 200);
    views[1].stats.request(Route::Payloads, 200);
    views[0].stats.request(Route::Other, 404);
    inc(&views[0].stats.payloads_accepted, 7);
    views[0].stats.observe_upload(0.003);
    let text = render(&views, true);
    assert!(
        text.contains("corepost_requests_total{shard=\"1\",route=\"payloads\",status=\"200\"} 2")
    );
    assert!(text.contains("corepost_requests_total{shard=\"0\",route=\"other\",status=\"404\"} 1"));
    assert!(text.contains("corepost_payloads_accepted_total{shard=\"0\"} 7"));
    assert!(text.contains("corepost_upload_duration_seconds_bucket{shard=\"0\",le=\"0.005\"} 1"));
    assert!(text.contains("corepost_upload_duration_seconds_bucket{shard=\"0\",le=\"0.002\"} 0"));
    assert!(text.contains("corepost_ready 1"));
}
