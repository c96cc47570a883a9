//! `sealfarm.dead-letters` for operators: list what waits there and why,
//! replay a task (its call runs again), purge what is beyond saving.
//!
//! Messages are read by consuming them without acknowledging: a listed
//! message goes back to the queue when the reading channel closes; a
//! replayed or purged one is acknowledged (replayed: after its task was
//! published again).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use sealfarm_runtime::broker::header;
use sealfarm_schemas::{topology, SectorRef, Stage, TaskMessage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::calls::Calls;

/// Dead letters listed in one page when the operator names no limit.
pub const PAGE: usize = 100;
/// The largest page.
pub const MAX_PAGE: usize = 1000;
/// How far into the queue a reading reaches: the broker's prefetch (a
/// 16-bit count) bounds how many messages one reader holds unacknowledged,
/// and a reading holds every message it passes. A queue longer than this is
/// listed up to here (and a reading then moves the first REACH behind the
/// rest); replay or purge some to see the rest.
pub const REACH: usize = u16::MAX as usize;
/// How long the queue must stay quiet, once its count is read, for the
/// reading to end.
const QUIET: Duration = Duration::from_millis(500);

/// Which part of the queue a listing shows: `limit` dead letters from
/// position `offset` (0 is the oldest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Default for Page {
    fn default() -> Self {
        Page { offset: 0, limit: PAGE }
    }
}

impl Page {
    /// Checks an operator's page: a limit of 1 to [`MAX_PAGE`], an end
    /// within [`REACH`].
    pub fn new(offset: usize, limit: usize) -> Result<Page, String> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(format!("limit {limit}: a page holds 1 to {MAX_PAGE} dead letters"));
        }
        if offset.saturating_add(limit) > REACH {
            return Err(format!(
                "offset {offset} + limit {limit} is beyond the {REACH} dead letters one reading reaches; \
                 replay or purge some to see the rest"
            ));
        }
        Ok(Page { offset, limit })
    }
}

/// One message in `sealfarm.dead-letters`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `<call-id>/<attempt>` for a task, `msg-<digest>` for anything else.
    pub id: String,
    pub call_id: Option<uuid::Uuid>,
    pub attempt: Option<u32>,
    pub sector: Option<String>,
    pub stage: Option<Stage>,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The queue it came from.
    pub queue: Option<String>,
    /// The worker that dead-lettered it, if one did.
    pub worker: Option<String>,
    /// When the broker dead-lettered it (Unix ms), if it did.
    pub at_ms: Option<u64>,
    pub bytes: usize,
    /// The start of a message that is not a task.
    pub preview: Option<String>,
}

/// What to do with the dead letters an operator named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    List,
    Replay,
    Purge,
}

/// The outcome for one dead letter.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Handled {
    pub dead_letter: DeadLetter,
    /// What happened (`replayed …`, `purged`), or why not.
    pub message: String,
    pub ok: bool,
}

/// Serialises readers: two at once would each see part of the queue.
#[derive(Default)]
pub struct DeadLetters {
    lock: Mutex<()>,
}

impl DeadLetters {
    pub fn new() -> Arc<Self> {
        Arc::new(DeadLetters::default())
    }

    /// Reads the dead letters: for a list, those of `page`; for a replay or
    /// purge, every one (up to [`REACH`]), acting on the `selected` ones (by
    /// id or id prefix, or all with `all`). Only what is listed or acted on
    /// is kept: the bodies are dropped as they are read, so memory does not
    /// grow with the queue.
    pub async fn handle(
        &self,
        calls: &Arc<Calls>,
        action: Action,
        selected: &[String],
        all: bool,
        page: Page,
    ) -> Result<Vec<Handled>> {
        let _one = self.lock.lock().await;
        let broker = calls.link.get().await?;
        let channel = broker.connection.create_channel().await?;
        let options = QueueDeclareOptions { passive: true, ..Default::default() };
        let waiting = channel
            .queue_declare(topology::DEAD_LETTER_QUEUE.into(), options, FieldTable::default())
            .await
            .context("reading sealfarm.dead-letters")?
            .message_count() as usize;
        // Every reading goes through the whole queue (up to REACH), even for
        // one page: a quorum queue puts what a reader gives back at its
        // tail, so only a reading that takes and gives back everything
        // leaves the order as it found it (and the next page where it was).
        let end = REACH;
        // The count is a hint, not the truth: messages a reader just gave
        // back (a `list` a moment ago closed its channel) are counted only
        // once the queue has taken them back. So read until the count is
        // reached and then until the queue stays quiet for QUIET.
        let mut handled = Vec::new();
        let prefetch = u16::try_from(end).unwrap_or(u16::MAX);
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let mut deliveries = channel
            .basic_consume(
                topology::DEAD_LETTER_QUEUE.into(),
                "sealfarm-bridge:dead-letters".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut read = 0usize;
        let mut last_tag = None;
        while read < end {
            let wait = if read < waiting { Duration::from_secs(2) } else { QUIET };
            let next = tokio::time::timeout(wait, deliveries.next()).await;
            let Ok(Some(Ok(delivery))) = next else { break };
            last_tag = Some(delivery.delivery_tag);
            let position = read;
            read += 1;
            if action == Action::List {
                if (page.offset..page.offset + page.limit).contains(&position) {
                    handled.push(Handled { dead_letter: describe(&delivery), message: String::new(), ok: true });
                }
                continue;
            }
            let letter = describe(&delivery);
            if !(all || selected.iter().any(|s| letter.id.starts_with(s.as_str()))) {
                continue;
            }
            let (ok, message) = match action {
                Action::Purge => match delivery.ack(BasicAckOptions::default()).await {
                    Ok(_) => (true, "purged".to_string()),
                    Err(err) => (false, format!("not purged: {err}")),
                },
                _ => replay(calls, &delivery).await,
            };
            handled.push(Handled { dead_letter: letter, message, ok });
        }
        // Everything not acknowledged goes back to the queue: wait (a
        // moment at most) until the queue has taken it back, so the next
        // reading finds every message in its place, not the ones this one
        // held behind those it did not.
        // Given back explicitly, in one go and in order, before the channel
        // closes (given back by the closing, some were seen to lose their place).
        if let Some(tag) = last_tag {
            let _ = channel.basic_nack(tag, BasicNackOptions { multiple: true, requeue: true }).await;
        }
        let _ = channel.close(200, "done".into()).await;
        let taken = handled.iter().filter(|h| h.ok && action != Action::List).count();
        let back = waiting.saturating_sub(taken);
        let settled = async {
            loop {
                let Ok(channel) = broker.connection.create_channel().await else { return };
                let counted = channel
                    .queue_declare(topology::DEAD_LETTER_QUEUE.into(), options, FieldTable::default())
                    .await
                    .map(|q| q.message_count() as usize);
                let _ = channel.close(200, "done".into()).await;
                if counted.map_or(true, |n| n >= back) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(3), settled).await;
        Ok(handled)
    }
}

async fn replay(calls: &Arc<Calls>, delivery: &Delivery) -> (bool, String) {
    let Ok(task) = serde_json::from_slice::<TaskMessage>(&delivery.data) else {
        return (false, "not a task message: nothing to replay (purge it)".into());
    };
    match calls.replay(&task).await {
        Ok(message) => match delivery.ack(BasicAckOptions::default()).await {
            Ok(_) => (true, message),
            Err(err) => (false, format!("{message}, but it stays in the queue: {err}")),
        },
        Err(err) => (false, format!("not replayed: {err:#}")),
    }
}

/// What a dead letter is and why it is there.
pub fn describe(delivery: &Delivery) -> DeadLetter {
    let task = serde_json::from_slice::<TaskMessage>(&delivery.data).ok();
    let sector_of = |s: &SectorRef| s.id.file_name();
    let death = first_death(delivery);
    let reason = header(delivery, topology::REASON_HEADER)
        .or_else(|| death.as_ref().and_then(|d| d.0.clone()).map(|r| format!("broker: {r} (delivered too often)")))
        .unwrap_or_else(|| "no reason recorded".into());
    let queue = header(delivery, topology::SOURCE_QUEUE_HEADER)
        .or_else(|| death.as_ref().and_then(|d| d.1.clone()))
        .or_else(|| header(delivery, "x-first-death-queue"));
    let id = match &task {
        Some(task) => format!("{}/{}", task.call_id, task.attempt),
        None => format!("msg-{}", &hex::encode(Sha256::digest(&delivery.data))[..12]),
    };
    DeadLetter {
        id,
        call_id: task.as_ref().map(|t| t.call_id),
        attempt: task.as_ref().map(|t| t.attempt),
        sector: task.as_ref().map(|t| sector_of(&t.sector)),
        stage: task.as_ref().map(|t| t.stage()),
        reason,
        queue,
        worker: header(delivery, topology::WORKER_HEADER),
        at_ms: death.and_then(|d| d.2),
        bytes: delivery.data.len(),
        preview: task.is_none().then(|| String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(120)]).into()),
    }
}

/// (reason, queue, time in ms) of the broker's first `x-death` record.
fn first_death(delivery: &Delivery) -> Option<(Option<String>, Option<String>, Option<u64>)> {
    let headers = delivery.properties.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else { return None };
    let AMQPValue::FieldTable(first) = deaths.as_slice().first()? else { return None };
    let text = |name: &str| match first.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let time = match first.inner().get("time") {
        Some(AMQPValue::Timestamp(seconds)) => Some(seconds * 1000),
        _ => None,
    };
    Some((text("reason"), text("queue"), time))
}
