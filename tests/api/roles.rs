//! The roles of migrations/V5__roles_and_applied_claims.sql and sql/99_privileges.sql, tried by
//! logging in as each: the service may read and call the engine's entry
//! points and nothing else; a DBA's read-only role may read everything and
//! change nothing; no setting turns a guard off for anyone but the owner.
//! (Every other test's nodes log in as the service role too, so the suite as
//! a whole proves the service can still do its job.)

use tokio_postgres::{error::SqlState, Client, NoTls};

use crate::helpers::{create_partner, create_payment, TestDatabase};

async fn login(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("log in");
    tokio::spawn(connection);
    client
}

/// What a write could have changed, to prove a refused one changed nothing.
async fn fingerprint(client: &Client) -> String {
    client
        .query_one(
            "SELECT concat_ws(' | ',
                (SELECT count(*) FROM commissions), (SELECT count(*) FROM commission_events),
                (SELECT string_agg(concat_ws(',', partner_id, currency, earned, reversed, held), ';' ORDER BY partner_id, currency) FROM partner_balances),
                (SELECT string_agg(concat_ws(',', id, status, provider_reference, refunded_amount), ';' ORDER BY id) FROM payments),
                (SELECT string_agg(concat_ws(',', id, name, commission_rate), ';' ORDER BY id) FROM partners),
                (SELECT position FROM event_log_head), (SELECT count(*) FROM webhook_events),
                (SELECT count(*) FROM disputes), (SELECT count(*) FROM notifications WHERE read_at IS NOT NULL))",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs each statement in a transaction of its own (rolled back), asserts
/// PostgreSQL refused it with `expected`, and that nothing changed.
async fn assert_refused(
    client: &mut Client,
    who: &str,
    expected: &SqlState,
    statements: &[String],
) {
    let before = fingerprint(client).await;
    for statement in statements {
        let tx = client.transaction().await.unwrap();
        let error = tx
            .batch_execute(statement)
            .await
            .err()
            .unwrap_or_else(|| panic!("{who} was allowed: {statement}"));
        assert_eq!(
            error.code(),
            Some(expected),
            "{who}: {statement}: {error:?}"
        );
        tx.rollback().await.unwrap();
    }
    assert_eq!(fingerprint(client).await, before, "{who}: nothing changed");
}

/// Writes nobody but the engine may make, each one a way around the ledger.
fn ledger_writes(partner: i64, payment: i64) -> Vec<String> {
    vec![
        format!("INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units) VALUES ({payment}, {partner}, 'earned', 1, 'NGN', 0.02, 100, 'verified', 2)"),
        format!("INSERT INTO commission_events (position, partner_id, seq, type, data) VALUES (99, {partner}, 99, 'commission.created', '{{}}')"),
        "UPDATE commission_events SET data = '{}'".into(),
        "DELETE FROM commissions".into(),
        "UPDATE partner_balances SET earned = earned + 1000".into(),
        "DELETE FROM partner_balances".into(),
        "TRUNCATE partner_balances".into(),
        "UPDATE partner_streams SET last_seq = 0".into(),
        "UPDATE event_log_head SET position = 9000000000".into(),
        format!("UPDATE payments SET provider_reference = 'edited' WHERE id = {payment}"),
        format!("UPDATE payments SET status = 'refunded' WHERE id = {payment}"),
        "INSERT INTO payments (amount, currency, status) VALUES (100, 'NGN', 'verified')".into(),
        format!("UPDATE partners SET commission_rate = 1 WHERE id = {partner}"),
        "DELETE FROM disputes".into(),
        "DELETE FROM webhook_events".into(),
        "UPDATE currencies SET minor_units = 0".into(),
        format!("SELECT settle_commission({payment}, 'refund')"),
        // The old bypass: a setting anyone may set.
        format!("SET LOCAL commissions.engine = 'on'; INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units) VALUES ({payment}, {partner}, 'earned', 1, 'NGN', 0.02, 100, 'verified', 2)"),
        "SET LOCAL commissions.engine = 'on'; UPDATE partner_balances SET earned = 0".into(),
    ]
}

/// A verified, partly refunded payment with a read notification: something
/// in every table the writes above aim at.
async fn scenario(db: &TestDatabase) -> (i64, i64) {
    let partner = create_partner(&db.pool, "Acme", None).await;
    let payment = create_payment(&db.pool, "100.00", "NGN", Some(partner)).await;
    let service = login(&db.service_url).await;
    service
        .batch_execute(&format!(
            "SELECT verify_payment({payment}); SELECT refund_payment({payment}, 25)"
        ))
        .await
        .expect("the service verifies and refunds through the engine");
    (partner, payment)
}

#[tokio::test]
async fn the_service_role_calls_the_engine_and_reads_but_writes_no_ledger_table() {
    let db = TestDatabase::new().await;
    let (partner, payment) = scenario(&db).await;
    let mut service = login(&db.service_url).await;

    // What the service is for: each of its writes through a function.
    let created: i64 = service
        .query_one("SELECT create_partner('Beta', 0.05)", &[])
        .await
        .unwrap()
        .get(0);
    service
        .batch_execute(&format!(
            "SELECT update_partner({created}, 'Beta Ltd', 0.04);
             SELECT record_payment(10, 'NGN', {created}, 'ref-1');
             SELECT * FROM mark_notification_read((SELECT min(id) FROM notifications), {partner});"
        ))
        .await
        .expect("the service's own writes go through the engine's functions");
    let audit: i64 = service
        .query_one("SELECT count(*) FROM commission_audit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        audit, 0,
        "the service reads the audit view, and it is clean"
    );

    assert_refused(
        &mut service,
        "the service",
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &ledger_writes(partner, payment),
    )
    .await;
}

#[tokio::test]
async fn the_dba_role_reads_every_table_and_view_and_changes_nothing() {
    let db = TestDatabase::new().await;
    let (partner, payment) = scenario(&db).await;
    let mut dba = login(&db.dba_url).await;

    let relations: Vec<String> = dba
        .query(
            "SELECT format('%I', table_name) FROM information_schema.tables
              WHERE table_schema = current_schema() AND table_name <> 'refinery_schema_history'
                -- The partners' signing secrets: refused, below.
                AND table_name <> 'partner_webhook_secrets'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(relations.len() >= 15, "sees the schema: {relations:?}");
    for relation in &relations {
        dba.query(&format!("SELECT * FROM {relation} LIMIT 1"), &[])
            .await
            .unwrap_or_else(|e| panic!("the DBA cannot read {relation}: {e:?}"));
    }

    let mut statements = ledger_writes(partner, payment);
    // No partner's webhook signing secret, nor a way to register or lease one.
    statements.extend([
        "SELECT * FROM partner_webhook_secrets".into(),
        format!("SELECT register_partner_webhook({partner}, 'https://hooks.example.com/', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')"),
        "SELECT * FROM lease_partner_webhooks('1 minute', 10)".into(),
    ]);
    // Nor may a DBA call what the service calls: each would change money.
    statements.extend([
        format!("SELECT verify_payment({payment})"),
        format!("SELECT refund_payment({payment}, 1)"),
        "SELECT record_payment(10, 'NGN')".into(),
        "SELECT create_partner('Mallory')".into(),
        format!("SELECT update_partner({partner}, NULL, 1)"),
        "SELECT * FROM reapply_parked_events()".into(),
        "DELETE FROM idempotency_keys".into(),
    ]);
    assert_refused(
        &mut dba,
        "the DBA",
        &SqlState::INSUFFICIENT_PRIVILEGE,
        &statements,
    )
    .await;
}

#[tokio::test]
async fn no_setting_turns_a_guard_off_for_anyone_but_the_owner() {
    let db = TestDatabase::new().await;
    let (partner, payment) = scenario(&db).await;
    // A superuser has every privilege, so only the guards stand in its way.
    let mut superuser = login(&db.url).await;
    let insert = format!(
        "INSERT INTO commissions (payment_id, partner_id, kind, amount, currency, rate, payment_amount, reason, minor_units) VALUES ({payment}, {partner}, 'earned', 1, 'NGN', 0.02, 100, 'verified', 2)"
    );
    let statements = [
        format!("SET LOCAL commissions.engine = 'on'; {insert}"),
        format!("SET LOCAL commissions.engine = 'on'; INSERT INTO commission_events (position, partner_id, seq, type, data) VALUES (99, {partner}, 99, 'commission.created', '{{}}')"),
        "SET LOCAL commissions.engine = 'on'; UPDATE partner_balances SET earned = earned + 1000".into(),
        "SET LOCAL commissions.engine = 'on'; UPDATE partner_streams SET last_seq = 0".into(),
        "SET LOCAL commissions.engine = 'on'; UPDATE event_log_head SET position = 1".into(),
        format!("SET LOCAL commissions.engine = 'on'; SELECT settle_commission({payment}, 'refund'); {insert}"),
    ];
    let guard = SqlState::from_code("CM003");
    assert_refused(&mut superuser, "a superuser", &guard, &statements).await;

    // The owner is the one exception (it is who the engine runs as): the
    // same setting lets its write through. Rolled back.
    let tx = superuser.transaction().await.unwrap();
    tx.batch_execute(
        "SET LOCAL ROLE commissions_owner; SET LOCAL commissions.engine = 'on';
         UPDATE partner_balances SET earned = earned",
    )
    .await
    .expect("the owner, saying it is the engine, may write");
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn the_owner_owns_everything_and_only_the_listed_functions_run_as_it() {
    let db = TestDatabase::new().await;
    let client = login(&db.url).await;
    let names = |sql: &'static str| {
        let client = &client;
        async move {
            let rows = client.query(sql, &[]).await.unwrap();
            rows.iter().map(|row| row.get(0)).collect::<Vec<String>>()
        }
    };
    let not_owned = names(
        "SELECT c.relname::text FROM pg_class c
          WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'v', 'S')
            AND c.relname <> 'refinery_schema_history' AND c.relowner <> 'commissions_owner'::regrole
         UNION ALL
         SELECT p.proname::text FROM pg_proc p
          WHERE p.pronamespace = current_schema()::regnamespace AND p.proowner <> 'commissions_owner'::regrole
         UNION ALL
         -- Enums, domains and composite types (a table's row type follows its table).
         SELECT t.typname::text FROM pg_type t
          WHERE t.typnamespace = current_schema()::regnamespace AND t.typtype IN ('e', 'd', 'c')
            AND t.typname <> 'refinery_schema_history' AND t.typowner <> 'commissions_owner'::regrole",
    )
    .await;
    assert!(
        not_owned.is_empty(),
        "not owned by commissions_owner: {not_owned:?}"
    );

    // A guard that ran as the owner would always see the owner, and let
    // everything through: the guards and engine_is_running stay INVOKER.
    let unsafe_definers = names(
        "SELECT p.proname::text FROM pg_proc p
          WHERE p.pronamespace = current_schema()::regnamespace AND p.prosecdef
            AND (p.proconfig IS NULL OR NOT p.proconfig @> ARRAY[format('search_path=%I, pg_temp', current_schema())])
         UNION ALL
         SELECT p.proname::text FROM pg_proc p
          WHERE p.pronamespace = current_schema()::regnamespace AND p.prosecdef
            AND p.proname IN ('engine_is_running', 'guard_engine_columns', 'reject_hand_insert', 'reject_ledger_change')",
    )
    .await;
    assert!(
        unsafe_definers.is_empty(),
        "SECURITY DEFINER without a fixed search_path, or a guard running as the owner: {unsafe_definers:?}"
    );
    let public_definers = names(
        "SELECT p.proname::text FROM pg_proc p
          WHERE p.pronamespace = current_schema()::regnamespace AND p.prosecdef
            AND has_function_privilege('public', p.oid, 'EXECUTE')",
    )
    .await;
    assert!(
        public_definers.is_empty(),
        "any login could run these as the owner: {public_definers:?}"
    );
}

#[tokio::test]
async fn migrate_gives_the_service_role_a_password_it_then_logs_in_with() {
    use crate::cluster::Cluster;

    // A cluster of its own, asking every login but the superuser's for a password.
    let cluster = Cluster::init("scram");
    let hba = cluster.data().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    cluster.give_to_owner(&hba);
    cluster.start();
    let port = cluster.port;
    let admin = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    commissions::db::migrate(&admin).await.unwrap();

    let too_short = commissions::db::set_service_role_password(&admin, "short").await;
    assert!(too_short.is_err(), "a short password is refused");
    let password = "a-service-password-for-this-test";
    commissions::db::set_service_role_password(&admin, password)
        .await
        .expect("set the password");

    let service = |password: &str| {
        format!("postgres://commissions_service:{password}@127.0.0.1:{port}/postgres")
    };
    let client = login(&service(password)).await;
    let who: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "commissions_service");
    let wrong = tokio_postgres::connect(&service("not-the-password-at-all"), NoTls).await;
    assert!(wrong.is_err(), "a wrong password is refused");

    // What the server stores (and would log) is a verifier, not the password.
    let superuser = login(&admin).await;
    let stored: String = superuser
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'commissions_service'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$"), "{stored}");
    assert!(!stored.contains(password));
}

/// A cluster from before PostgreSQL 15 (or a database upgraded from one) lets
/// every login CREATE in public: a `public.round(numeric, smallint)` would be
/// a closer match than pg_catalog's for the engine's own calls, and run as
/// the owner. And any login that may CONNECT may LISTEN on the engine's
/// channels. The migration takes both away.
#[tokio::test]
async fn nobody_but_the_owner_creates_in_the_schema_and_only_the_roles_connect() {
    let db = TestDatabase::new().await;
    let superuser = login(&db.url).await;
    superuser
        .batch_execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
        .await
        .unwrap();
    commissions::db::migrate(&db.url)
        .await
        .expect("migrate again");
    let creators: Vec<String> = superuser
        .query(
            "SELECT r::text FROM unnest(ARRAY['public', 'commissions_service', 'commissions_readonly']) r
              WHERE has_schema_privilege(r, current_schema(), 'CREATE')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(
        creators.is_empty(),
        "may create in the schema: {creators:?}"
    );

    let service = login(&db.service_url).await;
    let error = service
        .batch_execute("CREATE FUNCTION public.round(numeric, smallint) RETURNS numeric LANGUAGE sql AS 'SELECT 0'")
        .await
        .expect_err("the service creates nothing");
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));

    // A login that is none of the roles cannot connect, so cannot LISTEN.
    let nobody = format!("{}_nobody", db.name);
    superuser
        .batch_execute(&format!(
            "CREATE ROLE {nobody} LOGIN PASSWORD 'nobody-password'"
        ))
        .await
        .unwrap();
    let refused = tokio_postgres::connect(
        &crate::helpers::with_user(&db.url, &nobody, "nobody-password"),
        NoTls,
    )
    .await;
    let _ = superuser
        .batch_execute(&format!("DROP ROLE {nobody}"))
        .await;
    let error = refused.err().expect("a stranger cannot connect");
    assert_eq!(
        error.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{error:?}"
    );
}

/// As on a managed PostgreSQL: the migrator is its admin user, which may
/// create roles but is no superuser.
#[tokio::test]
async fn a_migrator_that_is_not_a_superuser_migrates_twice() {
    let name = format!("commissions_test_{}", uuid::Uuid::new_v4().simple());
    let admin = login(&crate::helpers::admin_url()).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {name}_admin LOGIN CREATEROLE PASSWORD 'admin-password'"
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name} OWNER {name}_admin"))
        .await
        .unwrap();
    let url = crate::helpers::with_user(
        &crate::helpers::admin_url(),
        &format!("{name}_admin"),
        "admin-password",
    );
    let url = match url.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{name}"),
        None => unreachable!(),
    };
    let first = commissions::db::migrate(&url).await;
    let second = commissions::db::migrate(&url).await;
    let owned: Option<i64> = match (&first, &second) {
        (Ok(()), Ok(())) => Some(
            login(&url)
                .await
                .query_one(
                    "SELECT count(*) FROM pg_proc WHERE pronamespace = current_schema()::regnamespace
                        AND prosecdef AND proowner = 'commissions_owner'::regrole",
                    &[],
                )
                .await
                .unwrap()
                .get(0),
        ),
        _ => None,
    };
    let _ = admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await;
    let _ = admin
        .batch_execute(&format!(
            "DROP OWNED BY {name}_admin; DROP ROLE {name}_admin"
        ))
        .await;
    first.expect("the first migrate");
    second.expect("the second migrate");
    assert!(
        owned.unwrap() >= 15,
        "the engine's entry points run as the owner"
    );
}
