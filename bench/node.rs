//! The system under test: a database of the bench's own, and service nodes
//! run as real `commissions serve` processes so their CPU and memory can be
//! read from /proc.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use tokio_postgres::NoTls;

pub const JWT_SECRET: &str = "bench-jwt-secret-0123456789abcdef0123456789";

/// The node's LISTEN_MODE (see `commissions::config::ListenMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ListenMode {
    Partner,
    Firehose,
}

impl ListenMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenMode::Partner => "partner",
            ListenMode::Firehose => "firehose",
        }
    }
}
pub const STRIPE_SECRET: &str = "whsec_bench_secret";

pub struct BenchDatabase {
    admin_url: String,
    pub name: String,
    pub url: String,
}

impl BenchDatabase {
    pub async fn create(admin_url: &str, synchronous_commit: &str) -> anyhow::Result<Self> {
        let name = format!("commissions_bench_{}", std::process::id());
        let admin = connect(admin_url)
            .await
            .context("DATABASE_URL reaches no PostgreSQL")?;
        // Two statements, two round trips: a multi-statement string is one implicit transaction.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let base = admin_url.split('?').next().unwrap_or(admin_url);
        let url = format!(
            "{}/{name}",
            base.rsplit_once('/').map(|(s, _)| s).unwrap_or(base)
        );
        commissions::db::migrate(&url).await?;
        let db = Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        };
        db.set_synchronous_commit(synchronous_commit).await?;
        Ok(db)
    }

    /// Every session that connects afterwards, the ceiling's and the nodes'
    /// alike, commits this way (sessions already open keep their setting).
    pub async fn set_synchronous_commit(&self, value: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            matches!(value, "on" | "off"),
            "synchronous_commit must be on or off"
        );
        connect(&self.admin_url)
            .await?
            .batch_execute(&format!(
                "ALTER DATABASE {} SET synchronous_commit = {value}",
                self.name
            ))
            .await?;
        Ok(())
    }

    pub async fn drop_database(&self) {
        if let Ok(admin) = connect(&self.admin_url).await {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ))
                .await;
        }
    }

    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        connect(&self.url).await
    }
}

pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// One `commissions serve` process on a free loopback port.
pub struct Node {
    child: Child,
    pub port: u16,
}

impl Node {
    pub async fn start(db: &BenchDatabase) -> anyhow::Result<Self> {
        Self::start_in(db, ListenMode::Firehose).await
    }

    pub async fn start_in(db: &BenchDatabase, mode: ListenMode) -> anyhow::Result<Self> {
        let port = free_port()?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_commissions"));
        // The nodes' tokio worker threads (tokio reads TOKIO_WORKER_THREADS; the
        // generator's own runtime must not, so it is passed under another name).
        if let Ok(threads) = std::env::var("NODE_WORKER_THREADS") {
            command.env("TOKIO_WORKER_THREADS", threads);
        }
        let child = command
            .arg("serve")
            .env("DATABASE_URL", &db.url)
            .env("LISTEN_MODE", mode.as_str())
            .env("BIND_ADDR", format!("127.0.0.1:{port}"))
            .env("JWT_SECRET", JWT_SECRET)
            .env("STRIPE_WEBHOOK_SECRET", STRIPE_SECRET)
            // The service's default pool size, unless the bench itself runs with
            // DB_MAX_CONNECTIONS set (the child inherits it).
            // The bench opens thousands of sockets from one address at once.
            .env("WS_MAX_SOCKETS_PER_USER", "100000")
            .env("WS_HANDSHAKES_PER_SECOND_PER_IP", "1000000")
            .env("WS_HANDSHAKES_PER_SECOND_PER_USER", "1000000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start commissions serve")?;
        let node = Self { child, port };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = http.get(format!("{}/readyz", node.http())).send().await {
                if r.status().is_success() {
                    return Ok(node);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("node on port {port} did not become ready")
    }

    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/notifications", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stats(&self) -> ProcessStats {
        ProcessStats::read(self.pid())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The CPU seconds used so far by each node's LISTEN backend (PostgreSQL runs on
/// this machine, so its backends' /proc entries are readable), keyed by pid.
pub async fn listener_backends_cpu(db: &BenchDatabase) -> anyhow::Result<Vec<(i32, f64)>> {
    let rows = db
        .connect()
        .await?
        .query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'commissions:listener' AND datname = $1",
            &[&db.name],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let pid: i32 = r.get(0);
            (pid, ProcessStats::read(pid as u32).cpu_seconds)
        })
        .collect())
}

/// CPU time and memory of a process, from /proc.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

impl ProcessStats {
    pub fn read(pid: u32) -> Self {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th of those.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            cpu_seconds: (ticks(11) + ticks(12)) / hz,
            rss_kib: kib("VmRSS:"),
            peak_rss_kib: kib("VmHWM:"),
        }
    }
}
