//! Group apply: requests that arrive together share one transaction.
//!
//! Every notifying commit passes through PostgreSQL's one notify queue lock
//! and its own WAL flush, so one payment per commit caps a primary at a few
//! thousand payments a second however cheap the engine is. A batcher takes
//! whatever has queued while the node's previous batches are in the database
//! and hands it over in one transaction: one COMMIT, one NOTIFY per partner,
//! one engine run over all its payments. The node runs one per kind of
//! request: provider webhooks (`webhook_batch`) and admin verifications
//! (`http::verifications`).
//!
//! * No timer. With no batch in the database, a batch leaves at once, so a
//!   lone request waits for nothing; batches only grow when the database is
//!   busy, which is when they pay.
//! * Under load (one of the node's last eight batches carried more than one
//!   request), a second batch (or third: `in_flight`) leaves beside one
//!   already in the database only once it holds a quarter of `max`; until
//!   then it waits for more requests or for a batch to finish. Small
//!   commits cost PostgreSQL several times more per payment than large
//!   ones, and sending every straggler at once, when a slot happened to be
//!   free, made a third of the commits at the max rate carry one payment.
//!   At a light load the wait would buy nothing but latency, so there a
//!   batch still leaves whenever a slot is free.
//! * Each request is answered only after its batch commits, with the answer
//!   it would have had alone.
//! * A request the batch cannot answer as it would alone (a verification of
//!   a payment that is not pending, say) is left out of it and applied alone
//!   once the batch has committed, so its error is the one it has alone.
//! * A batch that fails as a whole (a deadlock, a lock timeout behind a
//!   DBA's open transaction, a constraint a DBA added that one request
//!   breaks) wrote nothing, so its requests are applied again one per
//!   transaction: the bad one gets its own error and its neighbours their
//!   answers.

use std::{future::Future, sync::Arc};

use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

/// Why a request has no answer from the database: this node could not run
/// or finish its batch.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error("this node is shutting down")]
    Closed,
    #[error("the batch ended without an answer to this request")]
    NoAnswer,
}

/// The metrics one batcher reports, by name.
pub struct Metrics {
    /// Histogram: requests per batch (its buckets are set in `http::metrics`).
    pub batch_size: &'static str,
    /// Gauge: requests queued for the next batch.
    pub waiting: &'static str,
    /// Counter: batches that failed as a whole and were applied one by one.
    pub failed: &'static str,
}

/// One kind of request, applied alone or many to a transaction.
pub trait Apply: Send + Sync + 'static {
    type Job: Send + Sync + 'static;
    type Answer: Send + 'static;
    type Error: From<Stopped> + std::fmt::Display + Send + 'static;
    const METRICS: Metrics;

    /// One job in its own transaction: the answer it has alone.
    fn one(
        &self,
        job: &Self::Job,
    ) -> impl Future<Output = Result<Self::Answer, Self::Error>> + Send;

    /// Many jobs in one transaction, committed before this returns: an
    /// answer per job, in order, or `None` for a job the batch left out,
    /// which is then applied alone. An error means nothing was written.
    fn many(
        &self,
        jobs: &[Self::Job],
    ) -> impl Future<Output = Result<Vec<Option<Self::Answer>>, Self::Error>> + Send;
}

type Answer<A> = Result<<A as Apply>::Answer, <A as Apply>::Error>;

struct Queued<A: Apply> {
    job: A::Job,
    answer: oneshot::Sender<Answer<A>>,
}

/// A node's batcher for one kind of request. Cheap to clone; its task ends
/// when the last clone is dropped.
pub struct Batcher<A: Apply> {
    jobs: mpsc::Sender<Queued<A>>,
}

impl<A: Apply> Clone for Batcher<A> {
    fn clone(&self) -> Self {
        Batcher {
            jobs: self.jobs.clone(),
        }
    }
}

impl<A: Apply> Batcher<A> {
    /// `max` requests per batch at most, `in_flight` batches in the database
    /// at once (both at least 1: the configuration refuses 0).
    pub fn start(apply: A, max: usize, in_flight: usize) -> Batcher<A> {
        // Room for a few batches' worth: past that, requests wait to queue
        // (their HTTP connections hold them) instead of the node buffering
        // without bound.
        let (jobs, queue) = mpsc::channel(max * 4);
        tokio::spawn(run(
            Arc::new(apply),
            queue,
            Slots {
                free: Arc::new(Semaphore::new(in_flight)),
                total: in_flight,
                finished: Arc::new(Notify::new()),
            },
            max,
        ));
        Batcher { jobs }
    }

    /// Applies one job with whatever else is waiting, once its batch has
    /// committed. Dropped while its job is still queued (the request timed
    /// out, the client went away), the job is never applied.
    pub async fn apply(&self, job: A::Job) -> Answer<A> {
        let (answer, answered) = oneshot::channel();
        let waiting = Waiting::count(A::METRICS.waiting);
        if self.jobs.send(Queued { job, answer }).await.is_err() {
            return Err(Stopped::Closed.into());
        }
        // Queued: the batcher takes it off the gauge when it takes it.
        waiting.queued();
        answered
            .await
            .unwrap_or_else(|_| Err(Stopped::NoAnswer.into()))
    }
}

/// One request on the waiting gauge until its job is queued, so that a
/// request dropped while the queue is full does not stay counted.
struct Waiting(Option<&'static str>);

impl Waiting {
    fn count(gauge: &'static str) -> Waiting {
        ::metrics::gauge!(gauge).increment(1.0);
        Waiting(Some(gauge))
    }

    fn queued(mut self) {
        self.0 = None;
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(gauge) = self.0 {
            ::metrics::gauge!(gauge).decrement(1.0);
        }
    }
}

/// The batches a batcher may have in the database at once.
struct Slots {
    free: Arc<Semaphore>,
    total: usize,
    /// Signalled each time a batch leaves the database.
    finished: Arc<Notify>,
}

impl Slots {
    /// Batches in the database now, besides the one holding `_mine`.
    fn others_in_flight(&self, _mine: &OwnedSemaphorePermit) -> usize {
        self.total - self.free.available_permits() - 1
    }
}

/// A slot's hold on the database: gives the slot back and wakes a batch
/// waiting to grow.
struct InFlight {
    slot: Option<OwnedSemaphorePermit>,
    finished: Arc<Notify>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // The slot first: a waiting batch that registers after this wake-up
        // (notify_waiters reaches only those registered) must then find the
        // slot free when it checks, or it would wait for the next request.
        drop(self.slot.take());
        self.finished.notify_waiters();
    }
}

async fn run<A: Apply>(
    apply: Arc<A>,
    mut queue: mpsc::Receiver<Queued<A>>,
    slots: Slots,
    max: usize,
) {
    // The size at which a batch leaves beside another in the database.
    let beside = (max / 4).max(2).min(max);
    let mut recent = Recent::default();
    loop {
        // A slot first, then the batch: whatever arrives while every slot is
        // busy waits in the queue and leaves together.
        let Ok(slot) = slots.free.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        take_waiting(&mut queue, &mut batch, max);
        while batch.len() < beside && recent.had_company() && slots.others_in_flight(&slot) > 0 {
            // Registered before the check below, so a batch finishing in
            // between is not missed.
            let finished = slots.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if slots.others_in_flight(&slot) == 0 {
                break;
            }
            tokio::select! {
                job = queue.recv() => match job {
                    Some(job) => {
                        batch.push(job);
                        take_waiting(&mut queue, &mut batch, max);
                    }
                    None => break,
                },
                _ = &mut finished => break,
            }
        }
        ::metrics::gauge!(A::METRICS.waiting).decrement(batch.len() as f64);
        // A job whose request is gone (timed out while queued) is not applied:
        // nobody would learn its outcome.
        batch.retain(|q| !q.answer.is_closed());
        if batch.is_empty() {
            continue;
        }
        recent.left(batch.len());
        let in_flight = InFlight {
            slot: Some(slot),
            finished: slots.finished.clone(),
        };
        tokio::spawn(apply_batch(apply.clone(), batch, in_flight));
    }
}

/// The sizes of the last batches that left: whether the node is under load.
#[derive(Default)]
struct Recent {
    sizes: [usize; 8],
    next: usize,
}

impl Recent {
    fn left(&mut self, size: usize) {
        self.sizes[self.next] = size;
        self.next = (self.next + 1) % self.sizes.len();
    }

    /// One of the last eight batches carried more than one request. At a
    /// light load (nearly every batch alone) a straggler is not held: it
    /// would wait a commit's time for company that seldom comes.
    fn had_company(&self) -> bool {
        self.sizes.iter().any(|&n| n > 1)
    }
}

/// Moves what is queued now into the batch, up to `max` jobs.
fn take_waiting<A: Apply>(
    queue: &mut mpsc::Receiver<Queued<A>>,
    batch: &mut Vec<Queued<A>>,
    max: usize,
) {
    while batch.len() < max {
        match queue.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Applies a batch and answers each of its jobs. The slot is held while the
/// batch is in the database and given back before any job is applied alone,
/// so a batch stuck behind a DBA's lock costs the node one slot for one lock
/// timeout, not the retries' time as well.
async fn apply_batch<A: Apply>(apply: Arc<A>, batch: Vec<Queued<A>>, slot: InFlight) {
    ::metrics::histogram!(A::METRICS.batch_size).record(batch.len() as f64);
    if batch.len() == 1 {
        let queued = batch.into_iter().next().expect("one job");
        let answer = apply.one(&queued.job).await;
        let _ = queued.answer.send(answer);
        return;
    }
    let jobs: Vec<A::Job>;
    let senders: Vec<oneshot::Sender<Answer<A>>>;
    (jobs, senders) = batch.into_iter().map(|q| (q.job, q.answer)).unzip();
    let answers = match apply.many(&jobs).await {
        Ok(mut answers) => {
            answers.resize_with(jobs.len(), || None);
            answers
        }
        Err(e) => {
            // Rolled back, nothing of it written: each job on its own, at once.
            tracing::warn!(error = %e, jobs = jobs.len(), "a batch failed; applying its jobs one by one");
            ::metrics::counter!(A::METRICS.failed).increment(1);
            jobs.iter().map(|_| None).collect()
        }
    };
    drop(slot);
    let mut alone = Vec::new();
    for ((job, sender), answer) in jobs.iter().zip(senders).zip(answers) {
        match answer {
            Some(answer) => {
                let _ = sender.send(Ok(answer));
            }
            None => alone.push((job, sender)),
        }
    }
    futures::future::join_all(alone.into_iter().map(|(job, sender)| {
        let apply = &apply;
        async move {
            let _ = sender.send(apply.one(job).await);
        }
    }))
    .await;
}
