//! Queue hand-off: a glommio task queues jobs (`JobSender::send`, never blocking) and a worker
//! thread on a tokio current_thread runtime receives them with `recv_async` and releases the
//! budget, as the upload worker does. Measures jobs per second through the bounded queue.
#![allow(missing_docs)]

use bytes::Bytes;
use corepost::queue::{channel, Budget, Job};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BODY10: &[u8] = include_bytes!("workload/body10.json");

fn handoff(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("glommio_to_tokio_worker", |b| {
        b.iter_custom(|iters| {
            let budget = Arc::new(Budget::new(1 << 20, 1 << 30));
            let (tx, rx) = channel(budget.clone());
            let worker_budget = budget.clone();
            let worker = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    while let Ok(job) = rx.recv_async().await {
                        worker_budget.release(job.spans.len(), job.body.len());
                    }
                })
            });
            let body = Bytes::from_static(BODY10);
            let start = Instant::now();
            glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let mut sent = 0;
                    while sent < iters {
                        let job = Job {
                            body: body.clone(),
                            spans: vec![(0, 1); 10],
                            first_seq: sent,
                            received_secs: 0,
                            tenant: None,
                            headers: Vec::new(),
                            waiter: None,
                            spooled: None,
                        };
                        if tx.send(job).is_ok() {
                            sent += 1;
                        } else {
                            glommio::yield_if_needed().await;
                        }
                    }
                })
                .unwrap()
                .join()
                .unwrap();
            worker.join().unwrap();
            start.elapsed().max(Duration::from_nanos(1))
        })
    });
    g.finish();
}

criterion_group!(benches, handoff);
criterion_main!(benches);
