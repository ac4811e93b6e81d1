//! What each subcommand does. `main.rs` only parses and calls [`run`].

use crate::{
    config::{Cli, Command},
    db, demo, startup,
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate(config) => {
            db::migrate(config.database_url.expose()).await?;
            tracing::info!("migrations and engine applied");
            Ok(())
        }
        Command::Serve(config) => {
            let app = startup::Application::build(config).await?;
            tracing::info!(addr = %app.local_addr(), "serving");
            app.run_until(startup::shutdown_signal()).await
        }
        Command::Demo(config) => demo::demo(config).await,
        Command::SimulatePayment(config) => demo::simulate_payment(config).await,
    }
}
