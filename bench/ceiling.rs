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

use serde::Serialize;

use crate::{cpu, node::BenchDatabase};

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Ceiling {
    pub commits_per_second: f64,
    /// PostgreSQL's CPU per ceiling commit, to set beside a payment's.
    pub postgres_cpu_ms_per_commit: f64,
}

pub async fn measure(
    db: &BenchDatabase,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<Ceiling> {
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
    let cpu_before = cpu::Snapshot::take(&[]);
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
            anyhow::Ok(client)
        }));
    }
    // Kept open until the CPU is read: a backend's CPU leaves with it.
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await??);
    }
    let elapsed = start.elapsed();
    let spent = cpu::Snapshot::take(&[]).spent_since(&cpu_before, elapsed);
    drop(clients);
    let commits_per_second = done.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64();
    Ok(Ceiling {
        commits_per_second,
        postgres_cpu_ms_per_commit: 10.0 * spent.postgres_percent / commits_per_second,
    })
}
