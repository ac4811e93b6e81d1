//! The demo a new user runs, and the payment they simulate to watch a
//! commission arrive.
//!
//! `demo` migrates, makes sure a partner named "Demo Partner" exists, mints a
//! partner token and an admin token (24 h), prints the dashboard links, then
//! serves exactly as `serve` does. `simulate-payment` records a pending
//! payment and verifies it through the engine's own `verify_payment(id)`, as
//! an operator in psql would; the commission, its event and its NOTIFY are
//! the engine's, so every open dashboard receives it. `simulate-payout` pays
//! the partner's approved balance out through the engine's own
//! `create_payouts`, `mark_payout_sent` and `mark_payout_paid`, one step at a
//! time. The demo partner has no hold period, so what it earns is payable at
//! once.

use anyhow::{bail, Context};
use rust_decimal::Decimal;
use sqlx::PgPool;

use crate::{
    auth::{self, Claims, Role},
    config::{ServeConfig, SimulatePaymentConfig, SimulatePayoutConfig},
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
    println!("  and, once it has earned the payout minimum (NGN 50.00), a payout made and paid:");
    println!("  {exe} simulate-payment --partner-id {partner_id} --amount 5000.00 --currency NGN");
    println!("  {exe} simulate-payout --partner-id {partner_id} --currency NGN");
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
    let id = match existing {
        Some(id) => id,
        None => {
            sqlx::query_scalar!(r#"SELECT create_partner($1) AS "id!""#, DEMO_PARTNER)
                .fetch_one(pool)
                .await?
        }
    };
    // No hold period: the demo shows a payout without waiting 30 days.
    sqlx::query_scalar!("SELECT set_partner_hold_days($1, 0) AS id", id)
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
    let pool = connect(&config.database).await?;

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

pub async fn simulate_payout(config: SimulatePayoutConfig) -> anyhow::Result<()> {
    let currency = config.currency.to_uppercase();
    let pool = connect(&config.database).await?;
    let Some(balance) = sqlx::query!(
        r#"SELECT money_text(b.balance, b.currency) AS "balance!", money_text(c.payout_minimum, c.code) AS "minimum!"
             FROM partner_balances b JOIN currencies c ON c.code = b.currency
            WHERE b.partner_id = $1 AND b.currency = $2::text::char(3)"#,
        config.partner_id,
        currency
    )
    .fetch_optional(&pool)
    .await?
    else {
        bail!("partner #{} has earned nothing in {currency}", config.partner_id);
    };
    let payout = sqlx::query!(
        r#"SELECT id AS "id!", money_text(amount, currency) AS "amount!" FROM create_payouts(now(), $1, $2::text::char(3))"#,
        config.partner_id,
        currency
    )
    .fetch_optional(&pool)
    .await?;
    let Some(payout) = payout else {
        bail!(
            "no payout: partner #{}'s payable balance is {currency} {}, below the minimum of {currency} {} \
             (simulate a larger payment first)",
            config.partner_id,
            balance.balance,
            balance.minimum
        );
    };
    println!(
        "created payout #{} of {currency} {}",
        payout.id, payout.amount
    );
    let pause = std::time::Duration::from_secs(config.pause_secs);
    tokio::time::sleep(pause).await;
    sqlx::query_scalar!(r#"SELECT id AS "id!" FROM mark_payout_sent($1)"#, payout.id)
        .fetch_one(&pool)
        .await?;
    println!("payout #{} sent", payout.id);
    tokio::time::sleep(pause).await;
    let reference = format!("DEMO-{}", payout.id);
    sqlx::query_scalar!(
        r#"SELECT id AS "id!" FROM mark_payout_paid($1, $2)"#,
        payout.id,
        reference
    )
    .fetch_one(&pool)
    .await?;
    println!("payout #{} paid (reference {reference})", payout.id);
    Ok(())
}

/// A small pool for one command-line run.
async fn connect(database: &crate::config::DatabaseConfig) -> anyhow::Result<PgPool> {
    db::connect_pool(database.database_url.expose(), 2, database.session_limits())
        .await
        .context("cannot connect to PostgreSQL")
}
