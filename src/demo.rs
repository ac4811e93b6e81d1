//! The demo a new user runs, and the payment they simulate to watch a
//! commission arrive.
//!
//! `demo` migrates, makes sure a partner named "Demo Partner" exists, mints a
//! partner token and an admin token (24 h), prints the dashboard links, then
//! serves exactly as `serve` does. `simulate-payment` records a pending
//! payment and verifies it through the engine's own `verify_payment(id)`, as
//! an operator in psql would; the commission, its event and its NOTIFY are
//! the engine's, so every open dashboard receives it.

use anyhow::{bail, Context};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::{
    auth::{self, Claims, Role},
    config::{ServeConfig, SimulatePaymentConfig},
    db, startup,
};

/// The partner `demo` creates once and reuses on every later run.
pub const DEMO_PARTNER: &str = "Demo Partner";

/// How long the printed tokens stay valid.
const TOKEN_LIFETIME: chrono::Duration = chrono::Duration::hours(24);

pub async fn demo(config: ServeConfig) -> anyhow::Result<()> {
    db::migrate(config.database.database_url.expose())
        .await
        .context("cannot migrate the database")?;
    let jwt_secret = config.jwt_secret.clone();
    let app = startup::Application::build(config).await?;
    let partner_id = demo_partner(&app.state().db).await?;

    let expires = (chrono::Utc::now() + TOKEN_LIFETIME).timestamp();
    let partner = Claims {
        sub: "demo-partner".into(),
        role: Role::Partner,
        partner_id: Some(partner_id),
        exp: expires,
    };
    let admin = Claims {
        sub: "demo-admin".into(),
        role: Role::Admin,
        partner_id: None,
        exp: expires,
    };
    let base = format!("http://localhost:{}", app.local_addr().port());
    // Printed to the terminal of the person who asked for it, never logged.
    println!();
    println!("  {DEMO_PARTNER} is partner #{partner_id}. Dashboards (tokens valid 24 h):");
    println!();
    println!(
        "  partner: {base}/?token={}",
        auth::mint(&partner, jwt_secret.expose())
    );
    println!(
        "  admin:   {base}/?token={}",
        auth::mint(&admin, jwt_secret.expose())
    );
    println!();
    // The path of this very binary, so the hint works as printed (the
    // database URL is left out: it may hold a password).
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| {
            p.strip_prefix(std::env::current_dir().ok()?)
                .ok()
                .map(|p| p.display().to_string())
        })
        .unwrap_or_else(|| "commissions".into());
    println!("  Then, in another terminal with the same DATABASE_URL, watch a commission arrive:");
    println!("  {exe} simulate-payment --partner-id {partner_id} --amount 100.00 --currency NGN");
    println!();

    tracing::info!(addr = %app.local_addr(), "serving the demo");
    app.run_until(startup::shutdown_signal()).await
}

/// The id of "Demo Partner", created on the first run.
async fn demo_partner(pool: &PgPool) -> anyhow::Result<i64> {
    let existing = sqlx::query_scalar!(
        "SELECT id FROM partners WHERE name = $1 ORDER BY id LIMIT 1",
        DEMO_PARTNER
    )
    .fetch_optional(pool)
    .await?;
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = sqlx::query_scalar!(r#"SELECT create_partner($1) AS "id!""#, DEMO_PARTNER)
        .fetch_one(pool)
        .await?;
    Ok(id)
}

pub async fn simulate_payment(config: SimulatePaymentConfig) -> anyhow::Result<()> {
    // Plain decimal notation only: "1e3" or "-5" are refused, not reinterpreted.
    let plain = !config.amount.is_empty()
        && config
            .amount
            .chars()
            .all(|c| c.is_ascii_digit() || c == '.');
    let amount: Decimal = Some(config.amount.as_str())
        .filter(|_| plain)
        .and_then(|a| a.parse().ok())
        .filter(|a: &Decimal| *a > Decimal::ZERO)
        .with_context(|| {
            format!(
                "--amount must be a positive decimal such as 100.00, not {:?}",
                config.amount
            )
        })?;
    let currency = config.currency.to_uppercase();
    let pool = db::connect_pool(
        config.database.database_url.expose(),
        2,
        config.database.session_limits(),
    )
    .await
    .context("cannot connect to PostgreSQL")?;

    let Some(partner) =
        sqlx::query_scalar!("SELECT name FROM partners WHERE id = $1", config.partner_id)
            .fetch_optional(&pool)
            .await?
    else {
        bail!("there is no partner #{}", config.partner_id);
    };
    let payment_id = sqlx::query_scalar!(
        r#"SELECT record_payment($1, $2, $3) AS "id!""#,
        amount,
        currency,
        config.partner_id
    )
    .fetch_one(&pool)
    .await
    .with_context(|| format!("cannot record a payment of {amount} {currency}"))?;
    println!(
        "recorded pending payment #{payment_id}: {amount} {currency} for partner #{} ({partner})",
        config.partner_id
    );

    sqlx::query_scalar!(r#"SELECT id AS "id!" FROM verify_payment($1)"#, payment_id)
        .fetch_one(&pool)
        .await
        .with_context(|| format!("cannot verify payment #{payment_id}"))?;
    let commission = sqlx::query!(
        r#"SELECT c.id, money_text(c.amount, c.currency) AS "amount!", c.currency, c.rate, partner_last_seq(p.id) AS "last_seq!"
             FROM commissions c JOIN partners p ON p.id = c.partner_id
            WHERE c.payment_id = $1 AND c.kind = 'earned'"#,
        payment_id
    )
    .fetch_optional(&pool)
    .await?;
    match commission {
        Some(c) => println!(
            "verified payment #{payment_id}: commission #{} of {} {} (rate {}), partner event seq {}",
            c.id,
            c.amount,
            c.currency.trim(),
            c.rate.normalize(),
            c.last_seq
        ),
        None => println!("verified payment #{payment_id}: no commission (the partner's rate is 0)"),
    }
    Ok(())
}
