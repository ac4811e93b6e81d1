//! Prints the run as markdown tables (pasted as is into BENCHMARKS.md) and
//! saves it as JSON.

use std::path::Path as FsPath;

use serde::Serialize;

use crate::{
    clients::IdleRow,
    driver::{Load, Outcome, ResumeRow},
    Args,
};

#[derive(Serialize)]
pub struct Report {
    pub machine: String,
    pub args: String,
    pub ceiling: Option<crate::ceiling::Ceiling>,
    /// The ceiling with synchronous_commit = on (the `durable` scenario).
    pub durable_ceiling: Option<crate::ceiling::Ceiling>,
    pub synchronous_commit: String,
    /// The server's fsync: with `off` (the throwaway test cluster), a
    /// "durable" commit flushes nothing and the durable rows mean little.
    pub fsync: String,
    pub loads: Vec<LoadRow>,
    pub resume: Option<ResumeRow>,
    pub idle: Vec<IdleRow>,
}

#[derive(Serialize)]
pub struct LoadRow {
    pub scenario: String,
    pub path: crate::driver::Path,
    pub listen_mode: crate::node::ListenMode,
    pub nodes: usize,
    pub partners: usize,
    pub sockets: usize,
    pub target_rate: Option<u64>,
    pub sent: u64,
    pub payments_per_second: f64,
    pub events_delivered_per_second: f64,
    pub share_of_ceiling: Option<f64>,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub lost: i64,
    pub duplicated: u64,
    pub failed_requests: u64,
    pub closed_early: u64,
    pub listener_kills: u64,
    pub server_cpu_percent: f64,
    pub server_peak_rss_mib: f64,
    pub listener_backend_cpu_percent: Option<f64>,
    pub cpu: crate::cpu::Spent,
    /// PostgreSQL's CPU per committed payment: what the engine (and the
    /// webhook's SQL) costs the database, however many cores it has.
    pub postgres_cpu_ms_per_payment: f64,
    /// Verified payments per commit over the load phase (1 without batching).
    pub payments_per_commit: f64,
    /// (payments in one commit, commits of that size).
    pub commit_sizes: Vec<(i64, i64)>,
}

/// Commit sizes folded into power-of-two buckets: `1`, `2-3`, `4-7`, ...
fn size_buckets(sizes: &[(i64, i64)]) -> Vec<(String, i64)> {
    let mut buckets: Vec<(i64, i64)> = Vec::new();
    for &(size, commits) in sizes {
        let low = 1_i64 << (63 - size.max(1).leading_zeros());
        match buckets.last_mut() {
            Some((l, n)) if *l == low => *n += commits,
            _ => buckets.push((low, commits)),
        }
    }
    buckets
        .into_iter()
        .map(|(low, n)| {
            let label = if low == 1 {
                "1".to_owned()
            } else {
                format!("{low}-{}", 2 * low - 1)
            };
            (label, n)
        })
        .collect()
}

impl LoadRow {
    pub fn new(name: &str, load: &Load, outcome: &Outcome, ceiling: Option<f64>) -> Self {
        let secs = outcome.elapsed.as_secs_f64();
        let payments_per_second = outcome.committed_events as f64 / secs;
        let ms = |q: f64| outcome.latency_us.value_at_quantile(q) as f64 / 1000.0;
        Self {
            scenario: name.to_owned(),
            path: load.path,
            listen_mode: load.listen_mode,
            nodes: load.nodes,
            partners: load.partners,
            sockets: load.sockets,
            target_rate: load.rate,
            sent: outcome.sent,
            payments_per_second,
            events_delivered_per_second: outcome.delivered as f64 / secs,
            share_of_ceiling: ceiling.map(|c| payments_per_second / c),
            p50_ms: ms(0.50),
            p90_ms: ms(0.90),
            p99_ms: ms(0.99),
            max_ms: outcome.latency_us.max() as f64 / 1000.0,
            lost: outcome.expected_deliveries as i64 - outcome.delivered as i64,
            duplicated: outcome.duplicates,
            failed_requests: outcome.failed_requests,
            closed_early: outcome.closed_early,
            listener_kills: outcome.listener_kills,
            server_cpu_percent: outcome.cpu.nodes_percent,
            server_peak_rss_mib: outcome.server_peak_rss_kib as f64 / 1024.0,
            listener_backend_cpu_percent: outcome.listener_backend_cpu_percent,
            cpu: outcome.cpu,
            postgres_cpu_ms_per_payment: 10.0 * outcome.cpu.postgres_percent
                / payments_per_second.max(f64::MIN_POSITIVE),
            payments_per_commit: {
                let (payments, commits) = outcome
                    .commit_sizes
                    .iter()
                    .fold((0, 0), |(p, c), &(size, n)| (p + size * n, c + n));
                payments as f64 / commits.max(1) as f64
            },
            commit_sizes: outcome.commit_sizes.clone(),
        }
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    format!("{cpus} cores, {model}")
}

impl Report {
    pub fn new(args: &Args) -> Self {
        Self {
            machine: machine(),
            args: std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect::<Vec<_>>()
                .join(" "),
            ceiling: None,
            durable_ceiling: None,
            synchronous_commit: args.synchronous_commit.clone(),
            fsync: String::new(),
            loads: Vec::new(),
            resume: None,
            idle: Vec::new(),
        }
    }

    pub fn print(&self) {
        println!(
            "\n## Run: {}\n\nmachine: {}\n",
            if self.args.is_empty() {
                "(defaults)"
            } else {
                &self.args
            },
            self.machine
        );
        if let Some(c) = self.ceiling {
            println!(
                "PostgreSQL ceiling (insert + pg_notify per transaction, synchronous_commit = {}): **{:.0} commits/s**, PostgreSQL CPU {:.3} ms per commit\n",
                self.synchronous_commit, c.commits_per_second, c.postgres_cpu_ms_per_commit
            );
        }
        if self.fsync == "off" {
            println!("**This server runs with fsync = off** (a throwaway test cluster?): commits flush nothing, so synchronous_commit changes little and the durable rows are not durable.\n");
        }
        if let Some(c) = self.durable_ceiling {
            println!(
                "PostgreSQL ceiling, durable (synchronous_commit = on; the `durable` rows' share): **{:.0} commits/s**, PostgreSQL CPU {:.3} ms per commit\n",
                c.commits_per_second, c.postgres_cpu_ms_per_commit
            );
        }
        if !self.loads.is_empty() {
            let cores = self.loads[0].cpu.cores * 100;
            println!("| scenario | listen | nodes | partners | sockets | target/s | payments/s | share of ceiling | events delivered/s | p50 ms | p90 ms | p99 ms | max ms | lost | dup | failed req | closed early | listener kills | server CPU % | LISTEN backend CPU % | server peak RSS MiB | PostgreSQL CPU % | PostgreSQL CPU ms per payment | payments per commit | generator CPU % | machine busy % (of {cores}) |");
            println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            for r in &self.loads {
                println!(
                    "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {:.0} | {} | {:.1} | {:.0} | {:.2} | {:.1} | {:.0} | {:.0} |",
                    r.scenario,
                    r.listen_mode.as_str(),
                    r.nodes,
                    r.partners,
                    r.sockets,
                    r.target_rate.map(|t| t.to_string()).unwrap_or_else(|| "max".into()),
                    r.payments_per_second,
                    r.share_of_ceiling.map(|s| format!("{:.0}%", s * 100.0)).unwrap_or_else(|| "-".into()),
                    r.events_delivered_per_second,
                    r.p50_ms,
                    r.p90_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.lost,
                    r.duplicated,
                    r.failed_requests,
                    r.closed_early,
                    r.listener_kills,
                    r.server_cpu_percent,
                    r.listener_backend_cpu_percent
                        .map(|c| format!("{c:.1}"))
                        .unwrap_or_else(|| "-".into()),
                    r.server_peak_rss_mib,
                    r.cpu.postgres_percent,
                    r.postgres_cpu_ms_per_payment,
                    r.payments_per_commit,
                    r.cpu.generator_percent,
                    r.cpu.machine_busy_percent,
                );
            }
            println!();
            println!(
                "Commits by the number of payments they verified (the batch-size histogram):\n"
            );
            for r in &self.loads {
                let buckets = size_buckets(&r.commit_sizes)
                    .into_iter()
                    .map(|(label, n)| format!("{label}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                println!("- {}: {buckets}", r.scenario);
            }
            println!();
        }
        if let Some(r) = &self.resume {
            println!(
                "Resume: {} missed events, {} received, {} duplicated, all in **{:.0} ms**\n",
                r.missed, r.received, r.duplicates, r.millis_to_all
            );
        }
        if !self.idle.is_empty() {
            println!("| idle sockets | node RSS before KiB | after KiB | RSS per socket |");
            println!("|---|---|---|---|");
            for r in &self.idle {
                println!(
                    "| {} | {} | {} | {:.2} KiB |",
                    r.sockets,
                    r.rss_before_kib,
                    r.rss_after_kib,
                    r.bytes_per_socket / 1024.0
                );
            }
            println!();
        }
    }

    pub fn save(&self, dir: &FsPath) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!(
            "{}.json",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        std::fs::write(&path, serde_json::to_string_pretty(self)?)?;
        eprintln!("saved {}", path.display());
        Ok(())
    }
}
