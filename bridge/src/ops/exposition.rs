//! `GET /metrics`: the bridge's metrics, with the gauges of the farm's
//! state filled from the status snapshot at each scrape.

use super::metrics::{stage_size, Metrics};
use super::snapshot::Overview;

impl Metrics {
    /// The text exposition, with the state gauges taken from `overview`.
    pub(crate) fn render(&self, overview: &Overview) -> String {
        self.fill(overview);
        self.registry.encode()
    }

    fn fill(&self, overview: &Overview) {
        let now = overview.bridge.now_ms;
        let secs = |ms: u64| ms as f64 / 1000.0;
        for family in [
            &self.calls,
            &self.pc1_layers_done,
            &self.pc1_layers,
            &self.worker_up,
            &self.worker_draining,
            &self.worker_warming,
            &self.worker_cores,
            &self.worker_memory,
            &self.worker_memory_used,
            &self.worker_gpus,
            &self.worker_slots,
            &self.worker_jobs,
            &self.queue_messages,
            &self.queue_consumers,
            &self.queue_held,
        ] {
            family.clear();
        }
        self.job_since_progress.clear();
        self.ticket_headroom.clear();
        self.worker_heartbeat_age.clear();

        for (stage, state, count) in overview.call_counts() {
            self.calls.get_or_create(&vec![("stage", stage), ("state", state.to_string())]).set(count as i64);
        }
        // Labels name sectors, workers and stages, never a call id: a call
        // id is half of what forging a result takes, and /metrics is often
        // scraped by systems that show it to many people. A sector has one
        // PC1 open at a time, so its name is enough.
        let mut headroom = std::collections::BTreeMap::<String, u64>::new();
        for job in overview.jobs.iter().filter(|j| j.is_open()) {
            if let Some(deadline) = job.ticket_deadline_ms {
                let earliest = headroom.entry(job.sector_name()).or_insert(deadline);
                *earliest = deadline.min(*earliest);
            }
        }
        for (sector, deadline) in headroom {
            self.ticket_headroom.get_or_create(&vec![("sector", sector)]).set((deadline as f64 - now as f64) / 1000.0);
        }
        for worker in &overview.workers {
            let id = || ("worker", worker.id.clone());
            self.worker_up
                .get_or_create(&vec![id(), ("hostname", worker.hostname.clone())])
                .set(i64::from(worker.state != "gone"));
            self.worker_heartbeat_age.get_or_create(&vec![id()]).set(secs(worker.last_seen_ms_ago));
            self.worker_draining.get_or_create(&vec![id()]).set(i64::from(worker.state == "draining"));
            self.worker_warming.get_or_create(&vec![id()]).set(i64::from(!worker.warming.is_empty()));
            if let Some(hardware) = &worker.hardware {
                self.worker_cores.get_or_create(&vec![id()]).set(hardware.cores as i64);
                self.worker_memory.get_or_create(&vec![id()]).set(hardware.memory_bytes as i64);
                self.worker_memory_used.get_or_create(&vec![id()]).set(hardware.memory_used_bytes as i64);
                self.worker_gpus.get_or_create(&vec![id()]).set(hardware.gpus().count() as i64);
            }
            for slots in &worker.capacity {
                let labels =
                    vec![id(), ("stage", slots.stage.to_string()), ("sector_size", slots.sector_size.to_string())];
                self.worker_slots.get_or_create(&labels).set(i64::from(slots.slots));
            }
            for job in &worker.jobs {
                self.worker_jobs.get_or_create(&vec![id(), ("stage", job.stage.to_string())]).inc();
                let size = job
                    .sector_ref
                    .and_then(|s| s.proof_type.info())
                    .map_or("unknown".into(), |i| i.sector_size.to_string());
                let sector = job.sector.name();
                let labels =
                    vec![id(), ("stage", job.stage.to_string()), ("sector_size", size), ("sector", sector.clone())];
                let since = job.last_progress_ms.max(job.started_at_ms);
                // Two jobs of one sector and stage on a worker (a superseded
                // attempt beside its successor): the longer silence shows.
                let gauge = self.job_since_progress.get_or_create(&labels);
                gauge.set(gauge.get().max(secs(now.saturating_sub(since))));
                if let Some(progress) = job.progress.as_ref().filter(|p| p.step == "layer") {
                    let labels = vec![id(), ("sector", sector)];
                    self.pc1_layers_done.get_or_create(&labels).set(progress.done as i64);
                    self.pc1_layers.get_or_create(&labels).set(progress.total as i64);
                }
            }
        }
        for queue in &overview.queues {
            let mut labels = vec![("queue", queue.name.clone())];
            if let (Some(stage), Some(size)) = (queue.stage, queue.sector_size) {
                labels.extend(stage_size(stage, size));
            }
            self.queue_messages.get_or_create(&labels).set(queue.ready as i64);
            self.queue_consumers.get_or_create(&labels).set(i64::from(queue.consumers));
            if queue.stage.is_some() {
                self.queue_held.get_or_create(&labels).set(queue.held as i64);
            }
        }
        self.dead_letters_waiting.set(overview.dead_letters as i64);
        let miner = &overview.bridge.miner;
        self.miner_up.set(i64::from(miner.up));
        if let Some(ok) = miner.last_ok_ms {
            self.miner_last_contact.set(secs(now.saturating_sub(ok)));
        }
    }
}
