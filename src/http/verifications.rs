//! Admin verifications that arrive together share one transaction: the
//! verification kind of [`batch::Apply`](crate::db::batch). One call to
//! `verify_payments` (sql/06_operator_functions.sql) verifies every pending
//! payment of the batch, the requests' Idempotency-Key claims are marked in
//! the same transaction, and each response is read back from it before the
//! commit, as the request would have read it alone.
//!
//! A request the batch skips (its payment is not pending, does not exist,
//! or an earlier request of the batch verified it) is applied alone after
//! the commit, so its answer is the one it has alone: the same 404 or 409.

use std::collections::HashMap;

use super::{
    commissions::{self, Commission, Filter},
    error::{Error, Result},
    idempotency::{self, Claim},
    metrics,
    payments::{self, Payment},
};
use crate::db::batch::{Apply, Metrics, Stopped};

/// One `POST /api/payments/{id}/verify`.
pub struct Verification {
    pub payment_id: i64,
    pub claim: Option<Claim>,
}

/// Applies verifications for a node's [`Batcher`](crate::db::batch::Batcher).
pub struct Verifications {
    pub db: sqlx::PgPool,
}

impl From<Stopped> for Error {
    fn from(stopped: Stopped) -> Error {
        match stopped {
            Stopped::Closed => Error::Unavailable(stopped.to_string()),
            Stopped::NoAnswer => Error::Internal(stopped.into()),
        }
    }
}

impl Apply for Verifications {
    type Job = Verification;
    type Answer = (Payment, Option<Commission>);
    type Error = Error;
    const METRICS: Metrics = Metrics {
        batch_size: "verify_batch_size",
        waiting: "verifications_waiting",
        failed: "verify_batches_failed_total",
    };

    async fn one(&self, v: &Verification) -> Result<Self::Answer> {
        payments::verify_alone(&self.db, v.payment_id, v.claim.as_ref()).await
    }

    async fn many(&self, batch: &[Verification]) -> Result<Vec<Option<Self::Answer>>> {
        let ids: Vec<i64> = batch.iter().map(|v| v.payment_id).collect();
        let mut tx = self.db.begin().await?;
        let verified = sqlx::query!(
            r#"SELECT ordinal AS "ordinal!", payment_id AS "payment_id!", commission_id
                 FROM verify_payments($1) WHERE verified"#,
            &ids
        )
        .fetch_all(&mut *tx)
        .await?;
        let at = |ordinal: i32| {
            usize::try_from(ordinal - 1)
                .ok()
                .filter(|&i| i < batch.len())
        };
        let claims: Vec<&Claim> = verified
            .iter()
            .filter_map(|row| batch[at(row.ordinal)?].claim.as_ref())
            .collect();
        idempotency::mark_all_applied(&mut tx, &claims).await?;
        let payment_ids: Vec<i64> = verified.iter().map(|row| row.payment_id).collect();
        let commission_ids: Vec<i64> = verified
            .iter()
            .filter_map(|row| row.commission_id)
            .collect();
        let mut payments: HashMap<i64, Payment> = payments::fetch_all(&mut *tx, &payment_ids)
            .await?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let filter = Filter {
            ids: Some(&commission_ids),
            ..Filter::default()
        };
        let mut entries: HashMap<i64, Commission> =
            commissions::list(&mut *tx, filter, commission_ids.len() as i64)
                .await?
                .into_iter()
                .map(|c| (c.id, c))
                .collect();
        tx.commit().await?;

        let mut answers: Vec<Option<Self::Answer>> = batch.iter().map(|_| None).collect();
        for row in verified {
            let (Some(i), Some(payment)) = (at(row.ordinal), payments.remove(&row.payment_id))
            else {
                continue;
            };
            let entry = row.commission_id.and_then(|id| entries.remove(&id));
            if entry.is_some() {
                metrics::commission_written("earned");
            }
            answers[i] = Some((payment, entry));
        }
        Ok(answers)
    }
}
