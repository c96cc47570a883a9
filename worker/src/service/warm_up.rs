//! The worker's side of the warm-up (the plan and what the executor seals:
//! [`crate::sealing::warm_up`]): the GPU stages wait until it is over.

use std::sync::Arc;
use std::time::Duration;

use sealfarm_schemas::Stage;

use super::{list, Worker};

/// The longest a warm-up holds back the GPU stages: compiling the kernels
/// took 2.5–3.5 min on an H100 with an empty cache; reading 32/64 GiB
/// parameters into the page cache takes minutes more from slow disks.
const WARM_UP_LIMIT: Duration = Duration::from_secs(20 * 60);

impl Worker {
    /// Returns once `stage` is warm: at once for a stage the warm-up is not
    /// for, or when it is over.
    pub(super) async fn until_warm(&self, stage: Stage) {
        if self.config.warm_up.as_ref().is_some_and(|plan| plan.stages().contains(&stage)) {
            let mut warmed = self.warmed.subscribe();
            let _ = warmed.wait_for(|warm| *warm).await;
        }
    }

    /// Has the executor seal the warm-up sector, then opens the warming
    /// stages — whatever happens: a failed, panicking or overlong warm-up
    /// opens them too (their first task starts cold).
    pub(super) async fn warm_up(self: Arc<Self>, plan: crate::sealing::warm_up::Plan) {
        let stages = list(&plan.stages());
        tracing::info!(plan = plan.describe(), "warming up; {stages} wait for it");
        let started = std::time::Instant::now();
        let warming = std::panic::AssertUnwindSafe(self.warm_up_in_executor(&plan, &stages));
        match tokio::time::timeout(WARM_UP_LIMIT, futures_util::FutureExt::catch_unwind(warming)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("the warm-up panicked; taking {stages} cold"),
            Err(_) => tracing::warn!(
                limit = ?WARM_UP_LIMIT,
                "the warm-up did not end in time; taking {stages} cold (it goes on in the executor)"
            ),
        }
        self.metrics.warm_up_seconds.set(started.elapsed().as_secs_f64());
        self.warming.lock().unwrap().clear();
        // Watchers hear it is warm before it takes a task of those stages
        // (not waiting long for a broker that is away: nothing is taken then).
        let _ = tokio::time::timeout(Duration::from_secs(10), self.heartbeat()).await;
        self.warmed.send_replace(true);
    }

    async fn warm_up_in_executor(&self, plan: &crate::sealing::warm_up::Plan, stages: &str) {
        let mut warmed = self.executor.warm_up(plan).await;
        if warmed.as_ref().is_err_and(|lost| lost.after_panic) && !self.shutdown.is_set() {
            // Another job's library panic ended the executor under it.
            tracing::warn!("another job's panic ended the executor during the warm-up; warming up in a new one");
            warmed = self.executor.warm_up(plan).await;
        }
        match warmed {
            Ok(Ok(report)) => {
                for t in &report.stages {
                    let on = if t.gpu { "on the GPU" } else { "on the CPU" };
                    tracing::info!(
                        "warm-up {} of its {} sector: {} {on}",
                        t.stage,
                        t.sector_size,
                        crate::bench::duration(t.millis)
                    );
                }
                for p in &report.preloaded {
                    tracing::info!(
                        "warm-up: the {} parameters ({} bytes) read into the page cache in {}",
                        p.sector_size,
                        p.bytes,
                        crate::bench::duration(p.millis)
                    );
                }
                tracing::info!(seconds = format!("{:.1}", report.millis / 1e3), "warmed up; taking {stages}");
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    error,
                    "the warm-up failed; taking {stages} cold (its first task builds the GPU kernels)"
                )
            }
            // Not tried again: a crash of the warm-up itself (driver, OOM)
            // would cost every job running beside it a run each time.
            Err(_) => tracing::warn!("the executor ended during the warm-up; taking {stages} cold"),
        }
    }
}
