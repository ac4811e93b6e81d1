//! PostgreSQL's own ceiling for this design: transactions that insert a row
//! and call pg_notify, committed by `clients` connections at once. A NOTIFYing
//! commit holds a global lock through its commit, so this is far below plain
//! inserts; the service's throughput is reported as a share of it.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use crate::node::BenchDatabase;

pub async fn measure(
    db: &BenchDatabase,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    db.connect()
        .await?
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_ceiling (id bigserial PRIMARY KEY, v int NOT NULL)",
        )
        .await?;
    let done = Arc::new(AtomicU64::new(0));
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(db.connect().await?);
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for client in connections {
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                // One round trip per transaction, as pgbench -M simple with a one-line script.
                client
                    .batch_execute("BEGIN; INSERT INTO bench_ceiling (v) VALUES (1); SELECT pg_notify('bench_ceiling', 'x'); COMMIT")
                    .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
