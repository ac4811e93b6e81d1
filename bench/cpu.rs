//! Where the machine's CPU goes during a load phase: PostgreSQL (every
//! `postgres` process on this machine), the service nodes, the load generator
//! itself, and the machine as a whole. PostgreSQL, the nodes and the generator share the same
//! cores here, so a rate is only understood next to what each of them spent.

use std::{collections::HashMap, time::Duration};

use serde::Serialize;

use crate::node::ProcessStats;

/// CPU seconds used so far, read from /proc.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Per pid: a backend that exits between two snapshots must not subtract its
    /// whole life's CPU from the processes that remain.
    postgres: HashMap<u32, f64>,
    /// The service nodes, summed.
    nodes: f64,
    generator: f64,
    machine_busy: f64,
}

/// Each part's CPU over a phase, in % of one core.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Spent {
    pub postgres_percent: f64,
    pub nodes_percent: f64,
    pub generator_percent: f64,
    /// Everything busy on the machine (user, system, interrupts; not steal), summed over all cores.
    pub machine_busy_percent: f64,
    pub cores: usize,
}

impl Snapshot {
    /// `nodes`: the pids of the service nodes (none for the ceiling).
    pub fn take(nodes: &[u32]) -> Self {
        Self {
            postgres: postgres_cpu_seconds(),
            nodes: nodes
                .iter()
                .map(|&pid| ProcessStats::read(pid).cpu_seconds)
                .sum(),
            generator: ProcessStats::read(std::process::id()).cpu_seconds,
            machine_busy: machine_busy_seconds(),
        }
    }

    pub fn spent_since(&self, before: &Snapshot, elapsed: Duration) -> Spent {
        let percent = |seconds: f64| 100.0 * seconds / elapsed.as_secs_f64();
        Spent {
            // A backend that exits during the phase (a killed LISTEN session)
            // takes its CPU with it; the figure is then a little low.
            postgres_percent: percent(
                self.postgres
                    .iter()
                    .map(|(pid, now)| now - before.postgres.get(pid).copied().unwrap_or(0.0))
                    .sum(),
            ),
            nodes_percent: percent(self.nodes - before.nodes),
            generator_percent: percent(self.generator - before.generator),
            machine_busy_percent: percent(self.machine_busy - before.machine_busy),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// CPU seconds of every process named `postgres` (the postmaster, the
/// backends and the background workers), by pid; none when PostgreSQL runs elsewhere.
fn postgres_cpu_seconds() -> HashMap<u32, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|comm| comm.trim_end() == "postgres")
                .unwrap_or(false)
        })
        .map(|pid| (pid, ProcessStats::read(pid).cpu_seconds))
        .collect()
}

/// Busy CPU seconds of the whole machine, all cores: the first line of
/// /proc/stat minus idle, iowait and steal.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...; guest time is already in user.
    let busy: f64 = ticks.iter().take(8).sum::<f64>()
        - ticks.get(3).copied().unwrap_or(0.0)
        - ticks.get(4).copied().unwrap_or(0.0)
        - ticks.get(7).copied().unwrap_or(0.0);
    busy / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}
