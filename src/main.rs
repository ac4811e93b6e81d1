//! The `commissions` binary: parses the command line and hands over to the
//! library, where everything testable lives.

use clap::Parser;
use commissions::config::Cli;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    commissions::telemetry::init();
    let cli = Cli::parse();
    commissions::cli::run(cli).await
}
