//! What each subcommand does. `main.rs` only parses and calls [`run`].

use crate::{
    auth::{self, Claims, Role},
    config::{Cli, Command, TokenConfig, TokenRole},
    db, demo, startup,
};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate(config) => {
            let url = config.database.database_url.expose();
            db::migrate(url).await?;
            tracing::info!("migrations and engine applied");
            if let Some(password) = &config.service_role_password {
                db::set_service_role_password(url, password.expose()).await?;
                tracing::info!("password of commissions_service set");
            }
            Ok(())
        }
        Command::Serve(config) => {
            let app = startup::Application::build(config).await?;
            tracing::info!(addr = %app.local_addr(), "serving");
            app.run_until(startup::shutdown_signal()).await
        }
        Command::Demo(config) => demo::demo(config).await,
        Command::SimulatePayment(config) => demo::simulate_payment(config).await,
        Command::SimulatePayout(config) => demo::simulate_payout(config).await,
        Command::Token(config) => {
            println!("{}", mint_token(&config, chrono::Utc::now().timestamp())?);
            Ok(())
        }
    }
}

/// The token `commissions token` prints, valid for `ttl` seconds from `now`.
pub fn mint_token(config: &TokenConfig, now: i64) -> anyhow::Result<String> {
    crate::config::check_jwt_secret(&config.jwt_secret)?;
    let (role, partner_id) = match (config.role, config.partner_id) {
        (TokenRole::Admin, _) => (Role::Admin, None),
        (TokenRole::Partner, Some(id)) => (Role::Partner, Some(id)),
        (TokenRole::Partner, None) => anyhow::bail!("a partner token needs --partner-id"),
    };
    // Each admin token gets a subject of its own, so two admins' Idempotency-Keys
    // (scoped to the subject) can never collide and replay each other's responses.
    let sub = config.sub.clone().unwrap_or_else(|| match partner_id {
        Some(id) => format!("partner:{id}"),
        None => format!("admin:{}", uuid::Uuid::new_v4()),
    });
    let claims = Claims {
        sub,
        role,
        partner_id,
        exp: now + config.ttl,
    };
    Ok(auth::mint(&claims, config.jwt_secret.expose()))
}
