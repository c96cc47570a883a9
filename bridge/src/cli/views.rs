//! The operator commands (`sealfarm-bridge workers`, `jobs`, `queues`,
//! `drain`, `resume-worker`, `requeue`, `abort`, `dead-letters`): clients of
//! the bridge's status API that print what `lotus-miner sealing workers` and
//! `sealing jobs` print, for the whole farm. `--json` prints the API's JSON.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::calls::lifecycle::Phase;
use crate::ops::dead_letters::{DeadLetter, Handled};
use crate::ops::snapshot::{short_duration, JobStatus, QueueStatus, WorkerStatus};

/// Where the bridge is and the token to show it.
pub struct Client {
    pub url: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    /// `url`/`token` as given, else the `api` and `token-admin` (or
    /// `token-read`) files the bridge wrote into its state directory.
    pub fn new(url: Option<String>, token: Option<String>, ca: Option<&Path>, state_dir: &Path) -> Result<Client> {
        let read = |name: &str| std::fs::read_to_string(state_dir.join(name)).ok().map(|t| t.trim().to_string());
        let url = match url.or_else(|| read("api")) {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => bail!(
                "where is the bridge? {} has no `api` file (the bridge writes it at start): pass --bridge \
                 http://HOST:PORT or set SEALFARM_BRIDGE_URL",
                state_dir.display()
            ),
        };
        let Some(token) = token.or_else(|| read("token-admin")).or_else(|| read("token-read")) else {
            bail!(
                "no token: {} has neither token-admin nor token-read; pass --token or set SEALFARM_TOKEN (copy it \
                 from the bridge host's state directory)",
                state_dir.display()
            )
        };
        let timeout = std::time::Duration::from_secs(60);
        let pinned = state_dir.join(crate::tls::PINNED_CERT);
        let http = if url.starts_with("https://") && ca.is_none() && pinned.exists() {
            crate::tls::pinned_client(&pinned, timeout)?
        } else {
            sealfarm_runtime::trust::with_roots(reqwest::Client::builder().timeout(timeout), ca)?.build()?
        };
        Ok(Client { url, token, http })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        Ok(self.get_stamped(path).await?.0)
    }

    /// A GET whose answer the bridge stamps with its clock (`workers`,
    /// `jobs`): the value and the bridge's now, in Unix ms (this host's
    /// clock if the bridge did not say).
    pub async fn get_stamped<T: DeserializeOwned>(&self, path: &str) -> Result<(T, u64)> {
        self.send(self.http.get(format!("{}{path}", self.url)).bearer_auth(&self.token)).await
    }

    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: Value) -> Result<T> {
        let request = self.http.post(format!("{}{path}", self.url)).bearer_auth(&self.token).json(&body);
        Ok(self.send(request).await?.0)
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<(T, u64)> {
        let response = request.send().await.with_context(|| format!("cannot reach the bridge at {}", self.url))?;
        let now = response
            .headers()
            .get(crate::ops::NOW_HEADER)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or_else(sealfarm_schemas::messages::now_ms);
        let status = response.status();
        let body: Value = response.json().await.with_context(|| format!("unexpected answer from {}", self.url))?;
        if !status.is_success() {
            let error = body.get("error").and_then(Value::as_str).unwrap_or("no reason given");
            bail!("the bridge refused ({status}): {error}");
        }
        let value = serde_json::from_value(body).context("the bridge's answer has an unexpected shape")?;
        Ok((value, now))
    }
}

/// The state directory the bridge uses by default.
pub fn default_state_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into()).join(".sealfarm/bridge")
}

fn bytes(bytes: u64) -> String {
    match bytes {
        0..0x10_0000 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        0x10_0000..0x4000_0000 => format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64),
        _ => format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64),
    }
}

fn bar(used: f64, total: f64) -> String {
    let filled = if total > 0.0 { ((used / total) * 10.0).round().clamp(0.0, 10.0) as usize } else { 0 };
    format!("[{}{}]", "|".repeat(filled), " ".repeat(10 - filled))
}

fn percent(used: u64, total: u64) -> u64 {
    (used * 100).checked_div(total).unwrap_or(0)
}

/// `lotus-miner sealing workers`, for the farm: one block per worker.
pub fn format_workers(workers: &[WorkerStatus], now_ms: u64) -> String {
    let mut out = String::new();
    if workers.is_empty() {
        out.push_str("no worker has sent a heartbeat since the bridge started\n");
    }
    for w in workers {
        let state = match w.state.as_str() {
            "enabled" => String::new(),
            "gone" => format!(" (gone: no heartbeat for {})", short_duration(w.last_seen_ms_ago)),
            "warming" => {
                let stages: Vec<&str> = w.warming.iter().map(|s| s.as_str()).collect();
                format!(" (warming up: takes {} once its GPU kernels are built)", stages.join(", "))
            }
            other => format!(" ({other})"),
        };
        out.push_str(&format!("Worker {}, host {}{state}\n", w.id, w.hostname));
        // TASK: held/slots per stage (all sizes together), in lotus' order.
        let mut tasks = Vec::new();
        for stage in sealfarm_schemas::Stage::ALL {
            let slots: u32 = w.capacity.iter().filter(|c| c.stage == stage).map(|c| c.slots).sum();
            let held = w.jobs.iter().filter(|j| j.stage == stage).count();
            if slots > 0 || held > 0 {
                tasks.push(format!("{}({held}/{slots})", stage.to_string().to_uppercase()));
            }
        }
        out.push_str(&format!("\tTASK: {}\n", tasks.join(" ")));
        if let Some(h) = &w.hardware {
            let threads = w.in_use.map_or(0, |u| u.threads);
            out.push_str(&format!(
                "\tCPU:  {} {threads}/{} core(s) in use\n",
                bar(threads as f64, h.cores as f64),
                h.cores
            ));
            out.push_str(&format!(
                "\tRAM:  {} {}% {}/{}",
                bar(h.memory_used_bytes as f64, h.memory_bytes as f64),
                percent(h.memory_used_bytes, h.memory_bytes),
                bytes(h.memory_used_bytes),
                bytes(h.memory_bytes)
            ));
            if let Some(used) = w.in_use.filter(|u| u.memory_bytes > 0) {
                out.push_str(&format!(" ({} reserved by jobs)", bytes(used.memory_bytes)));
            }
            out.push('\n');
            let vmem_used = h.memory_used_bytes + h.swap_used_bytes;
            let vmem = h.memory_bytes + h.swap_bytes;
            out.push_str(&format!(
                "\tVMEM: {} {}% {}/{}\n",
                bar(vmem_used as f64, vmem as f64),
                percent(vmem_used, vmem),
                bytes(vmem_used),
                bytes(vmem)
            ));
            let gpus: Vec<_> = h.gpus().collect();
            if !gpus.is_empty() {
                let used = w.in_use.map_or(0.0, |u| u.gpus);
                out.push_str(&format!(
                    "\tGPU:  {} {:.0}% {used:.2}/{} gpu(s) in use\n",
                    bar(used, gpus.len() as f64),
                    used * 100.0 / gpus.len() as f64,
                    gpus.len()
                ));
                for gpu in gpus {
                    out.push_str(&format!("\tGPU: {}\n", gpu.name));
                }
            }
        }
        for job in &w.jobs {
            let progress =
                job.progress.as_ref().map(|p| format!(" {} {}/{}", p.step, p.done, p.total)).unwrap_or_default();
            let state = match job.running_since_ms {
                Some(since) => format!("running {}", short_duration(now_ms.saturating_sub(since))),
                None => "waiting for resources".to_string(),
            };
            out.push_str(&format!(
                "\tJOB:  {} {}{progress} ({state}) call {}\n",
                job.stage.to_string().to_uppercase(),
                job.sector.name(),
                &job.call_id.simple().to_string()[..8]
            ));
        }
    }
    out
}

/// `lotus-miner sealing jobs`, for the farm.
pub fn format_jobs(jobs: &[JobStatus], now_ms: u64) -> String {
    let mut sorted: Vec<&JobStatus> = jobs.iter().collect();
    // Running first, then what waits, then what ended (the order of `Phase`).
    sorted.sort_by_key(|j| (j.state, std::cmp::Reverse(j.arrived_at_ms)));
    let mut rows = vec![["ID", "Sector", "Worker", "Hostname", "Task", "State", "Attempt", "Time"].map(String::from)];
    for j in sorted {
        let task = match j.stage.as_str() {
            "fetch" => "GET".to_string(),
            "move" => "MOV".to_string(),
            stage => stage.to_uppercase(),
        };
        let state = match &j.progress {
            Some(p) if j.state == Phase::Running => format!("running ({} {}/{})", p.step, p.done, p.total),
            _ => j.state.to_string(),
        };
        let time = match (j.started_at_ms, j.finished_at_ms, j.returned_at_ms) {
            (Some(start), Some(end), _) => short_duration(end.saturating_sub(start)),
            (Some(start), None, _) => short_duration(now_ms.saturating_sub(start)),
            // The bridge's own calls (fetch, move): from the call to its Return.
            (None, _, Some(returned)) => short_duration(returned.saturating_sub(j.arrived_at_ms)),
            _ => short_duration(now_ms.saturating_sub(j.arrived_at_ms)),
        };
        rows.push([
            j.short_id.clone(),
            j.sector.number.to_string(),
            j.worker.clone().unwrap_or_else(|| "-".into()),
            j.hostname.clone().unwrap_or_else(|| "-".into()),
            task,
            state,
            j.attempt.to_string(),
            time,
        ]);
    }
    let mut out = table(&rows);
    for j in jobs.iter().filter(|j| j.state.is_failure()) {
        if let Some(error) = &j.error {
            out.push_str(&format!("{} {}: {error}\n", j.short_id, j.state));
        }
    }
    out
}

/// Per stage and size: what waits, what is being worked on, who consumes.
pub fn format_queues(queues: &[QueueStatus], dead_letters: u64, all: bool) -> String {
    let rate = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
    let mut rows =
        vec![["Queue", "Stage", "Size", "Ready", "Held", "Unacked", "Consumers", "Publish/s", "Deliver/s"]
            .map(String::from)];
    for q in queues {
        let idle = q.ready == 0 && q.held == 0 && q.consumers == 0 && q.unacked.unwrap_or(0) == 0;
        if q.stage.is_some() && idle && !all {
            continue;
        }
        rows.push([
            q.name.clone(),
            q.stage.map_or("-".into(), |s| s.to_string().to_uppercase()),
            q.sector_size.map_or("-".into(), |s| s.to_string()),
            q.ready.to_string(),
            q.held.to_string(),
            q.unacked.map_or("-".into(), |u| u.to_string()),
            q.consumers.to_string(),
            rate(q.publish_rate),
            rate(q.deliver_rate),
        ]);
    }
    let mut out = table(&rows);
    if !all {
        out.push_str("(stage queues with no message and no consumer left out: --all shows them)\n");
    }
    out.push_str(&format!("dead letters waiting: {dead_letters}"));
    if dead_letters > 0 {
        out.push_str(" (sealfarm-bridge dead-letters list)");
    }
    out.push('\n');
    out
}

pub fn format_dead_letters(letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return "no dead letters\n".into();
    }
    let mut rows = vec![["ID", "Sector", "Stage", "Queue", "Worker", "Reason"].map(String::from)];
    for d in letters {
        rows.push([
            d.id.clone(),
            d.sector.clone().unwrap_or_else(|| "-".into()),
            d.stage.map_or("-".into(), |s| s.to_string().to_uppercase()),
            d.queue.clone().unwrap_or_else(|| "-".into()),
            d.worker.clone().unwrap_or_else(|| "-".into()),
            d.reason.clone(),
        ]);
    }
    table(&rows)
}

pub fn format_handled(handled: &[Handled]) -> String {
    if handled.is_empty() {
        return "no dead letter matched\n".into();
    }
    handled
        .iter()
        .map(|h| format!("{} {}: {}\n", if h.ok { "ok    " } else { "FAILED" }, h.dead_letter.id, h.message))
        .collect()
}

/// Left-aligned columns, two spaces apart.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    // Plain columns two spaces apart, as `lotus-miner sealing jobs` prints them.
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING).set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    for row in rows {
        table.add_row(row.iter().map(String::as_str));
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_and_tables_line_up() {
        assert_eq!(bar(5.0, 10.0), "[|||||     ]");
        assert_eq!(bar(3.0, 0.0), "[          ]");
        let rows = [["a".to_string(), "bb".to_string()], ["ccc".to_string(), "d".to_string()]];
        assert_eq!(table(&rows), "a    bb\nccc  d\n");
        assert_eq!(short_duration(1500), "1.5s");
        assert_eq!(short_duration(12), "12ms");
        assert_eq!(
            (bytes(2048), bytes(3 << 20), bytes(5 << 30)),
            ("2.0 KiB".into(), "3.0 MiB".into(), "5.0 GiB".into())
        );
        assert_eq!(short_duration(125_000), "2m5s");
        assert_eq!(short_duration(3_725_000), "1h2m5s");
    }
}
