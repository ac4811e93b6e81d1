//! The load generator: drives verified payments through the real service and
//! measures what a partner's dashboard sees, next to PostgreSQL's own ceiling
//! for a transaction that NOTIFYs on this machine.
//!
//! Run it with `cargo bench --bench load -- --help` (release build). It needs
//! a PostgreSQL superuser URL in DATABASE_URL (`scripts/bench` finds or starts
//! one); it creates its own database and drops it at the end. Every figure is
//! printed, and the whole run is saved as JSON under bench/results/.
//!
//! Latency is measured from the moment the driver sends a verification (SQL
//! call or webhook POST) to the moment each socket receives the event; the
//! driver and the sockets share one clock. Each payment's amount encodes its
//! request number, so the event's `payment_amount` says which send it answers.

mod ceiling;
mod clients;
mod cpu;
mod driver;
mod node;
mod report;

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// insert + pg_notify transactions/s: the ceiling of this design on this primary.
    Ceiling,
    /// Webhook HTTP in, event on the socket out, as fast as it goes.
    MaxWebhook,
    /// SQL verify_payment in, event on the socket out, as fast as it goes.
    MaxSql,
    /// A fixed rate (--rate) through webhooks: latency percentiles.
    Rate,
    /// A fixed rate (--rate) straight through SQL: the relay's latency without HTTP in front.
    RateSql,
    /// A fixed rate of half the measured ceiling over --nodes nodes and --rate-sockets sockets.
    HalfCeiling,
    /// RSS per idle socket at --idle-sockets counts.
    Idle,
    /// A client that missed --resume-events events reconnects with since.
    Resume,
    /// The node's LISTEN backend is terminated every --kill-every-ms under load.
    Chaos,
    /// Per-partner LISTEN vs the firehose: SQL path at --rate over --listen-partners partners,
    /// with --listen-online of them online (one socket each), in both listen modes.
    ListenModes,
    /// The ceiling and both max rates again with synchronous_commit = on (PostgreSQL's
    /// default, and what a ledger runs with): the notify lock is then held through a WAL flush.
    Durable,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "load", about = "Load generator for the commissions service")]
pub struct Args {
    /// PostgreSQL superuser URL (maintenance database); the bench creates its own database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ceiling,max-webhook,max-sql,rate,rate-sql,half-ceiling,resume,chaos,listen-modes,durable,idle"
    )]
    pub scenarios: Vec<Scenario>,
    /// Service nodes for the throughput scenarios.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Partner sockets for the throughput and rate scenarios.
    #[arg(long, default_value_t = 1000)]
    pub sockets: usize,
    /// Admin sockets (each sees every event).
    #[arg(long, default_value_t = 1)]
    pub admin_sockets: usize,
    /// Partners the sockets and payments are spread over.
    #[arg(long, default_value_t = 50)]
    pub partners: usize,
    /// Concurrent verifications in flight (also the ceiling's client count).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds each load phase runs.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Payments per second of the `rate` scenario.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Nodes and sockets of the `half-ceiling` scenario.
    #[arg(long, default_value_t = 2)]
    pub half_nodes: usize,
    #[arg(long, default_value_t = 10_000)]
    pub half_sockets: usize,
    /// Idle socket counts at which RSS per socket is measured. Each socket costs a descriptor on
    /// both sides; where the hard RLIMIT_NOFILE is 20,000 (this sandbox), 19,900 fit (each process also needs a few descriptors of its own).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,19900")]
    pub idle_sockets: Vec<usize>,
    #[arg(long, default_value_t = 10_000)]
    pub resume_events: usize,
    #[arg(long, default_value_t = 1500)]
    pub kill_every_ms: u64,
    /// Partners the `listen-modes` scenario spreads payments over.
    #[arg(long, default_value_t = 10_000)]
    pub listen_partners: usize,
    /// Partners online (one socket each) in the `listen-modes` runs.
    #[arg(long, value_delimiter = ',', default_value = "10,10000")]
    pub listen_online: Vec<usize>,
    /// synchronous_commit for the bench database (ceiling and service alike). `off` measures the
    /// notify lock and the engine rather than this machine's fsync latency; `on` is the durable default.
    #[arg(long, default_value = "off", value_parser = ["on", "off"])]
    pub synchronous_commit: String,
    /// The nodes' LISTEN_MODE in every scenario but `listen-modes`, which runs both.
    #[arg(long, value_enum, default_value = "firehose")]
    pub listen_mode: node::ListenMode,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
}

fn raise_fd_limit() {
    // 20k sockets on each side need more descriptors than the default; root may raise the hard limit.
    let want: libc::rlim_t = 200_000;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(limit.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            let soft = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
    }
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; drop it before parsing our own flags.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    raise_fd_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bench_db =
        node::BenchDatabase::create(&args.database_url, &args.synchronous_commit).await?;
    let mut report = report::Report::new(&args);
    report.fsync = bench_db
        .connect()
        .await?
        .query_one("SHOW fsync", &[])
        .await?
        .get(0);
    let result = run_scenarios(&args, &bench_db, &mut report).await;
    report.print();
    report.save(&args.out)?;
    bench_db.drop_database().await;
    result
}

async fn run_scenarios(
    args: &Args,
    db: &node::BenchDatabase,
    report: &mut report::Report,
) -> anyhow::Result<()> {
    let ceiling = if args.scenarios.contains(&Scenario::Ceiling)
        || args.scenarios.contains(&Scenario::HalfCeiling)
        || args
            .scenarios
            .iter()
            .any(|s| matches!(s, Scenario::MaxSql | Scenario::MaxWebhook))
    {
        let measured =
            ceiling::measure(db, args.concurrency, Duration::from_secs(args.seconds)).await?;
        report.ceiling = Some(measured);
        eprintln!(
            "ceiling: {:.0} insert+notify commits/s at {} clients",
            measured.commits_per_second, args.concurrency
        );
        Some(measured.commits_per_second)
    } else {
        None
    };

    for scenario in &args.scenarios {
        let plans: Vec<(&str, driver::Load)> = match scenario {
            Scenario::Ceiling | Scenario::Idle | Scenario::Resume | Scenario::Durable => continue,
            Scenario::MaxWebhook => vec![(
                "max rate, webhook",
                load(
                    args,
                    args.nodes,
                    args.sockets,
                    None,
                    driver::Path::Webhook,
                    None,
                ),
            )],
            Scenario::MaxSql => vec![(
                "max rate, SQL",
                load(
                    args,
                    args.nodes,
                    args.sockets,
                    None,
                    driver::Path::Sql,
                    None,
                ),
            )],
            Scenario::Rate => vec![(
                "fixed rate, webhook",
                load(
                    args,
                    args.nodes,
                    args.sockets,
                    Some(args.rate),
                    driver::Path::Webhook,
                    None,
                ),
            )],
            Scenario::RateSql => vec![(
                "fixed rate, SQL",
                load(
                    args,
                    args.nodes,
                    args.sockets,
                    Some(args.rate),
                    driver::Path::Sql,
                    None,
                ),
            )],
            Scenario::HalfCeiling => {
                let rate = ceiling.map(|c| (c / 2.0) as u64).unwrap_or(args.rate);
                vec![(
                    "half the ceiling, webhook",
                    load(
                        args,
                        args.half_nodes,
                        args.half_sockets,
                        Some(rate),
                        driver::Path::Webhook,
                        None,
                    ),
                )]
            }
            Scenario::Chaos => vec![(
                "LISTEN killed every 1.5 s, SQL",
                load(
                    args,
                    1,
                    args.sockets,
                    Some(args.rate),
                    driver::Path::Sql,
                    Some(Duration::from_millis(args.kill_every_ms)),
                ),
            )],
            // No admin socket: one would make every node hear the admin channel in both modes.
            Scenario::ListenModes => [node::ListenMode::Partner, node::ListenMode::Firehose]
                .into_iter()
                .flat_map(|mode| {
                    args.listen_online.iter().map(move |&online| {
                        (
                            "listen modes, SQL",
                            driver::Load {
                                admin_sockets: 0,
                                partners: args.listen_partners,
                                listen_mode: mode,
                                ..load(args, 1, online, Some(args.rate), driver::Path::Sql, None)
                            },
                        )
                    })
                })
                .collect(),
        };
        for (name, plan) in plans {
            eprintln!(
                "running: {name} ({} nodes, {} sockets, listen mode {})",
                plan.nodes,
                plan.sockets,
                plan.listen_mode.as_str()
            );
            let outcome = driver::run(db, &plan)
                .await
                .with_context(|| format!("scenario {name}"))?;
            report
                .loads
                .push(report::LoadRow::new(name, &plan, &outcome, ceiling));
        }
    }

    if args.scenarios.contains(&Scenario::Durable) {
        run_durable(args, db, report).await?;
    }
    if args.scenarios.contains(&Scenario::Resume) {
        eprintln!("running: resume of {} missed events", args.resume_events);
        report.resume = Some(driver::resume(db, args.resume_events).await?);
    }
    if args.scenarios.contains(&Scenario::Idle) {
        for &count in &args.idle_sockets {
            eprintln!("running: {count} idle sockets");
            report
                .idle
                .push(clients::idle_rss(db, count, args.partners).await?);
        }
    }
    Ok(())
}

/// A load phase with the run's sizes, concurrency and listen mode.
fn load(
    args: &Args,
    nodes: usize,
    sockets: usize,
    rate: Option<u64>,
    path: driver::Path,
    kill_listener_every: Option<Duration>,
) -> driver::Load {
    driver::Load {
        nodes,
        sockets,
        admin_sockets: args.admin_sockets,
        partners: args.partners,
        concurrency: args.concurrency,
        duration: Duration::from_secs(args.seconds),
        rate,
        path,
        kill_listener_every,
        listen_mode: args.listen_mode,
    }
}

async fn run_durable(
    args: &Args,
    db: &node::BenchDatabase,
    report: &mut report::Report,
) -> anyhow::Result<()> {
    db.set_synchronous_commit("on").await?;
    let result = async {
        let measured =
            ceiling::measure(db, args.concurrency, Duration::from_secs(args.seconds)).await?;
        eprintln!(
            "durable ceiling: {:.0} insert+notify commits/s at {} clients",
            measured.commits_per_second, args.concurrency
        );
        report.durable_ceiling = Some(measured);
        for (name, path) in [
            ("max rate, webhook, durable", driver::Path::Webhook),
            ("max rate, SQL, durable", driver::Path::Sql),
        ] {
            eprintln!("running: {name}");
            let plan = load(args, args.nodes, args.sockets, None, path, None);
            let outcome = driver::run(db, &plan)
                .await
                .with_context(|| format!("scenario {name}"))?;
            report.loads.push(report::LoadRow::new(
                name,
                &plan,
                &outcome,
                Some(measured.commits_per_second),
            ));
        }
        anyhow::Ok(())
    }
    .await;
    db.set_synchronous_commit(&args.synchronous_commit).await?;
    result
}
