//! Helpers shared by the integration tests: a private RabbitMQ vhost per
//! test, real `sealfarm-worker` processes, and a test-side publisher that
//! sends tasks and reads results the way the bridge does.
//!
//! Nothing here fakes a part: the broker is the real RabbitMQ on
//! 127.0.0.1:5672 (the test command starts it), workers are the built
//! binaries, proofs are real.

pub mod devminer;
pub mod jsonrpc;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use sealfarm_schemas::topology;
use sealfarm_schemas::{ResultMessage, Stage, TaskMessage};

/// A free TCP port on 127.0.0.1.
pub fn free_local_address() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The RabbitMQ the tests use.
pub const BROKER: &str = "127.0.0.1:5672";

/// Directory of the built binaries: `target/<profile>/`, where a binary of
/// this crate lives and above the `deps/` folder of the test executables.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let dir = exe.parent().expect("executable folder");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary; fails clearly when it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.exists(), "{} is missing: build the binaries first (cargo build --workspace --bins)", path.display());
    path
}

/// `len` pseudo-random bytes (xorshift) from `seed`: payloads of real size
/// whose digests and comparisons mean something.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Resident memory of a process in MiB: now (`VmRSS:`) or its peak (`VmHWM:`).
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

/// A RabbitMQ virtual host of one test, deleted when dropped, so tests
/// running in parallel never see each other's queues.
pub struct TestVhost {
    pub name: String,
    /// The node `rabbitmqctl` manages (None: the local default node).
    node: Option<String>,
    /// Every node's `host:port`, in the order processes try them.
    pub nodes: Vec<String>,
}

/// The three-node cluster of `scripts/rabbitmq-cluster`: its nodes' AMQP addresses.
pub const CLUSTER_NODES: [&str; 3] = ["127.0.0.1:5681", "127.0.0.1:5682", "127.0.0.1:5683"];

impl TestVhost {
    pub fn new(label: &str) -> Self {
        assert!(
            std::net::TcpStream::connect_timeout(&BROKER.parse().unwrap(), Duration::from_secs(2)).is_ok(),
            "RabbitMQ is not listening on {BROKER}; start it (scripts/test does)"
        );
        Self::create(label, None, vec![BROKER.to_string()])
    }

    /// A vhost on the three-node cluster of `scripts/rabbitmq-cluster`,
    /// started (and joined) first if it is not running.
    pub fn on_cluster(label: &str) -> Self {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster");
        let out = Command::new(&script).arg("up").output().expect("scripts/rabbitmq-cluster runs");
        assert!(out.status.success(), "scripts/rabbitmq-cluster up failed: {}", String::from_utf8_lossy(&out.stderr));
        Self::on_node(label, "sf1@localhost", CLUSTER_NODES.iter().map(|n| n.to_string()).collect())
    }

    /// A vhost on the RabbitMQ node `node` (for `rabbitmqctl -n`), reached at `nodes` (`host:port`).
    pub fn on_node(label: &str, node: &str, nodes: Vec<String>) -> Self {
        Self::create(label, Some(node.to_string()), nodes)
    }

    fn create(label: &str, node: Option<String>, nodes: Vec<String>) -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let name = format!("sealfarm-test-{label}-p{}-{id}", std::process::id());
        let vhost = TestVhost { name, node, nodes };
        vhost.remove_orphans();
        vhost.rabbitmqctl(&["add_vhost", &vhost.name]);
        vhost.rabbitmqctl(&["set_permissions", "-p", &vhost.name, "guest", ".*", ".*", ".*"]);
        vhost
    }

    /// Deletes the test vhosts whose test process is gone (killed before it
    /// could drop them). Each holds some 75 quorum queues, about 240 of the
    /// broker's file descriptors (927 for a broker started with the default
    /// limit of 1024): a few left behind and the broker stops accepting
    /// connections, and the next tests wait for it in vain.
    fn remove_orphans(&self) {
        let Ok(out) = self.rabbitmqctl_command(&["-q", "list_vhosts", "name"]).output() else { return };
        for name in String::from_utf8_lossy(&out.stdout).lines().filter(|n| n.starts_with("sealfarm-test-")) {
            let pid = name.rsplit('-').nth(1).and_then(|p| p.strip_prefix('p')).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = self.rabbitmqctl_command(&["delete_vhost", name]).output();
            }
        }
    }

    /// `rabbitmqctl ARGS` against this vhost's broker; must succeed.
    pub fn rabbitmqctl(&self, args: &[&str]) -> String {
        let out = self.rabbitmqctl_command(args).output().expect("rabbitmqctl runs");
        assert!(out.status.success(), "rabbitmqctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rabbitmqctl ARGS` against this vhost's broker, whatever its outcome.
    pub fn rabbitmqctl_output(&self, args: &[&str]) -> std::process::Output {
        self.rabbitmqctl_command(args).output().expect("rabbitmqctl runs")
    }

    fn rabbitmqctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("rabbitmqctl");
        if let Some(node) = &self.node {
            command.args(["-n", node]);
        }
        command.args(args);
        command
    }

    /// The URL of the first node (the test's own connections use it).
    pub fn url(&self) -> String {
        self.node_url(0)
    }

    /// The URL of node `index` (0-based) of [`TestVhost::nodes`].
    pub fn node_url(&self, index: usize) -> String {
        format!("amqp://guest:guest@{}/{}", self.nodes[index], self.name)
    }

    /// Every node's URL, comma-separated, as `--amqp`/`SEALFARM_AMQP_URL` take them.
    pub fn urls(&self) -> String {
        (0..self.nodes.len()).map(|i| self.node_url(i)).collect::<Vec<_>>().join(",")
    }

    /// The worker token the bridges and workers of this vhost share.
    pub fn worker_token(&self) -> String {
        format!("worker-token-{}", self.name)
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = self.rabbitmqctl_command(&["delete_vhost", &self.name]).output();
    }
}

/// The test's side of the broker: publishes tasks and reads results, as the
/// bridge will.
pub struct Publisher {
    pub connection: Connection,
    sender: TaskSender,
    results: Consumer,
}

/// Publishes tasks with confirms on one channel.
#[derive(Clone)]
pub struct TaskSender {
    channel: Channel,
}

impl TaskSender {
    /// Opens a confirm-mode channel and declares the topology.
    pub async fn open(connection: &Connection) -> Result<Self> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        sealfarm_runtime::queues::declare(&channel).await?;
        Ok(TaskSender { channel })
    }

    /// Publishes raw bytes to a queue (through the default exchange) and waits for the confirm.
    pub async fn publish_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions { mandatory: true, ..Default::default() },
                body,
                // Stamped with the test vhosts' account, as sealfarm stamps its own
                // messages: the bridge takes results only with a user_id.
                BasicProperties::default().with_delivery_mode(2).with_user_id("guest".into()),
            )
            .await?
            .await?;
        if !confirm.is_ack() || confirm.take_message().is_some() {
            bail!("broker did not take the message for {queue}");
        }
        Ok(())
    }

    /// Publishes a task to the shared queue of its stage and sector size.
    pub async fn publish(&self, task: &TaskMessage) -> Result<()> {
        let queue = topology::queue_of(task).context("known proof type")?;
        self.publish_raw(&queue, &serde_json::to_vec(task)?).await
    }
}

impl Publisher {
    pub async fn connect(vhost: &TestVhost) -> Result<Self> {
        let connection = Connection::connect(&vhost.url(), ConnectionProperties::default()).await?;
        let sender = TaskSender::open(&connection).await?;
        let results = sender
            .channel
            .basic_consume(
                topology::RESULTS_QUEUE.into(),
                "test-results".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Publisher { connection, sender, results })
    }

    pub async fn publish_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        self.sender.publish_raw(queue, body).await
    }

    pub async fn publish(&self, task: &TaskMessage) -> Result<()> {
        self.sender.publish(task).await
    }

    /// The next result, acknowledged.
    pub async fn next_result(&mut self, timeout: Duration) -> Result<ResultMessage> {
        let delivery = tokio::time::timeout(timeout, self.results.next())
            .await
            .with_context(|| format!("no result within {timeout:?}"))?
            .context("results consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
        Ok(serde_json::from_slice(&delivery.data)?)
    }

    /// The result of one call, skipping others (which are returned too).
    pub async fn result_of(
        &mut self,
        task: &TaskMessage,
        timeout: Duration,
    ) -> Result<(ResultMessage, Vec<ResultMessage>)> {
        let deadline = Instant::now() + timeout;
        let mut others = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = self
                .next_result(left)
                .await
                .with_context(|| format!("waiting for {} of {}", task.stage(), task.sector.id))?;
            if result.call_id == task.call_id {
                return Ok((result, others));
            }
            others.push(result);
        }
    }

    /// Every result that arrives within `window`.
    pub async fn drain_results(&mut self, window: Duration) -> Vec<ResultMessage> {
        let mut out = Vec::new();
        while let Ok(result) = self.next_result(window).await {
            out.push(result);
        }
        out
    }

    /// Dead letters currently queued, with their `x-sealfarm-reason` header.
    pub async fn dead_letters(&self, expected: usize, timeout: Duration) -> Result<Vec<(String, Delivery)>> {
        dead_letters(&self.connection, expected, timeout).await
    }
}

/// Takes up to `expected` dead letters from `sealfarm.dead-letters`, with
/// their `x-sealfarm-reason` header.
pub async fn dead_letters(
    connection: &Connection,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<(String, Delivery)>> {
    {
        let channel = connection.create_channel().await?;
        let mut consumer = channel
            .basic_consume(
                topology::DEAD_LETTER_QUEUE.into(),
                "test-dead".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Some(delivery)) = tokio::time::timeout(left, consumer.next()).await else {
                break;
            };
            let delivery = delivery?;
            delivery.ack(BasicAckOptions::default()).await?;
            let reason = header(&delivery, topology::REASON_HEADER).unwrap_or_default();
            out.push((reason, delivery));
        }
        Ok(out)
    }
}

/// Process ids whose parent is `parent` (the executor of a worker).
pub fn child_pids(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

pub use sealfarm_runtime::broker::header;

/// A running sealfarm process (worker or bridge); killed when dropped.
pub struct FarmProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl FarmProcess {
    /// Starts a worker on `vhost` with its sealing path and state under `dir`.
    pub fn start(vhost: &TestVhost, dir: &Path, id: &str, stages: &str, sizes: &str) -> Self {
        Self::start_with(vhost, dir, id, stages, sizes, &[])
    }

    /// As [`FarmProcess::start`], with more `sealfarm-worker run` arguments.
    pub fn start_with(vhost: &TestVhost, dir: &Path, id: &str, stages: &str, sizes: &str, extra: &[&str]) -> Self {
        let log = dir.join(format!("{id}.log"));
        let mut command = Command::new(binary("sealfarm-worker"));
        command
            .args(["run", "--worker-id", id, "--stages", stages, "--sector-sizes", sizes, "--heartbeat-interval", "1s"])
            // Test machines have no GPU: C2 runs on the CPU, which the operator must allow.
            .arg("--cpu-proving");
        if !extra.contains(&"--metrics-listen") {
            // Many workers on one machine: each on a port of its own.
            command.args(["--metrics-listen", "127.0.0.1:0"]);
        }
        if !extra.contains(&"--sealing-path") {
            // The bridge's shared storage.
            command.arg("--sealing-path").arg(dir.join("sealing"));
        }
        command.arg("--state-dir").arg(dir.join(format!("state-{id}"))).args(extra);
        Self::spawn(command, vhost, log)
    }

    /// As [`FarmProcess::start_with`], for a farm with a bridge listening on
    /// `bridge`: C1 outputs, C2 inputs and piece data travel there.
    pub fn start_for_bridge(
        vhost: &TestVhost,
        dir: &Path,
        bridge: std::net::SocketAddr,
        id: &str,
        stages: &str,
        sizes: &str,
        extra: &[&str],
    ) -> Self {
        let url = format!("http://{bridge}");
        let token = vhost.worker_token();
        let mut args = vec!["--bridge", &url, "--worker-token", &token];
        args.extend_from_slice(extra);
        Self::start_with(vhost, dir, id, stages, sizes, &args)
    }

    /// Runs `command` on `vhost` with its output appended to `log`.
    fn spawn(mut command: Command, vhost: &TestVhost, log: PathBuf) -> Self {
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let child = command
            .env("SEALFARM_AMQP_URL", vhost.urls())
            .env("RUST_LOG", "info,lapin=warn")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        FarmProcess { child: Some(child), log }
    }

    /// Starts `sealfarm-bridge run` on `vhost`, talking to the miner at
    /// `api_info`, listening on `listen`, with shared storage `dir/sealing`.
    pub fn start_bridge(
        vhost: &TestVhost,
        dir: &Path,
        api_info: &str,
        listen: std::net::SocketAddr,
        extra_args: &[&str],
    ) -> Self {
        Self::start_named_bridge(vhost, dir, "bridge", api_info, listen, extra_args)
    }

    /// As [`FarmProcess::start_bridge`], for one of several bridges sharing
    /// `dir/sealing`: its state in `dir/state-<name>`, its log `dir/<name>.log`.
    pub fn start_named_bridge(
        vhost: &TestVhost,
        dir: &Path,
        name: &str,
        api_info: &str,
        listen: std::net::SocketAddr,
        extra_args: &[&str],
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let mut command = Command::new(binary("sealfarm-bridge"));
        command
            .args(["run", "--listen", &listen.to_string()])
            .arg("--storage")
            .arg(dir.join("sealing"))
            .arg("--state-dir")
            .arg(dir.join(format!("state-{name}")))
            .args(extra_args)
            .env("MINER_API_INFO", api_info)
            .env("SEALFARM_WORKER_TOKEN", vhost.worker_token());
        Self::spawn(command, vhost, log)
    }

    /// SIGKILL, no clean-up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        send_signal(child.id(), "TERM");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("worker did not stop within {timeout:?} after SIGTERM; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for FarmProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn send_signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// Whether `proof` is a valid seal proof of `sector` with these CIDs, ticket and seed.
pub fn verify_sector_proof(
    sector: sealfarm_schemas::SectorRef,
    cids: &sealfarm_schemas::SectorCids,
    ticket: [u8; 32],
    seed: [u8; 32],
    proof: &[u8],
) -> Result<bool> {
    use sealfarm_schemas::commitment::Commitment;
    let api = sealfarm_worker::sealing::proofs::api_proof(sector.proof_type).context("known proof type")?;
    let comm_r = Commitment::Replica.from_cid(cids.sealed.as_ref().context("CommR")?).map_err(anyhow::Error::msg)?;
    let comm_d = Commitment::Data.from_cid(cids.unsealed.as_ref().context("CommD")?).map_err(anyhow::Error::msg)?;
    let id = filecoin_proofs_api::SectorId::from(sector.id.number);
    filecoin_proofs_api::seal::verify_seal(api, comm_r, comm_d, sector.id.prover_id(), id, ticket, seed, proof)
}

/// Whether `proof` is a valid snap-deal (empty sector update) proof of
/// `sector` from `sector_key` (the old CommR) to the new CIDs.
pub fn verify_update_proof(
    sector: sealfarm_schemas::SectorRef,
    sector_key: &sealfarm_schemas::Cid,
    new_sealed: &sealfarm_schemas::Cid,
    new_unsealed: &sealfarm_schemas::Cid,
    proof: &[u8],
) -> Result<bool> {
    use sealfarm_schemas::commitment::Commitment;
    let update = sealfarm_worker::sealing::snap::update_proof(sector)?;
    let replica = |cid| Commitment::Replica.from_cid(cid).map_err(anyhow::Error::msg);
    let data = Commitment::Data.from_cid(new_unsealed).map_err(anyhow::Error::msg)?;
    filecoin_proofs_api::update::verify_empty_sector_update_proof(
        update,
        proof,
        replica(sector_key)?,
        replica(new_sealed)?,
        data,
    )
}

/// The job records of a stopped worker (`sealfarm-worker jobs --json`).
pub fn job_records(state_dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(binary("sealfarm-worker"))
        .args(["jobs", "--json", "--state-dir"])
        .arg(state_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "jobs failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Tasks for a committed-capacity sector, built as the bridge builds them
/// from the miner's calls.
pub mod cc {
    use sealfarm_schemas::messages::PieceData;
    use sealfarm_schemas::{
        Bytes, PieceInfo, RegisteredSealProof, SectorCids, SectorId, SectorRef, SectorSize, Task, TaskMessage,
    };

    pub const MINER: u64 = 1000;

    pub fn sector(number: u64, proof: RegisteredSealProof) -> SectorRef {
        SectorRef { id: SectorId { miner: MINER, number }, proof_type: proof }
    }

    pub fn add_piece(sector: SectorRef) -> TaskMessage {
        // An unknown proof type (a bad-input test) still gets a 2 KiB-shaped task.
        let size = sector.proof_type.info().map_or(SectorSize::KIB2, |i| i.sector_size);
        TaskMessage::new(
            sector,
            Task::Ap { existing_piece_sizes: vec![], piece_size: size.unpadded(), data: PieceData::Null },
        )
    }

    pub fn precommit1(sector: SectorRef, ticket: [u8; 32], piece: &PieceInfo) -> TaskMessage {
        TaskMessage::new(sector, Task::Pc1 { ticket: Bytes(ticket.to_vec()), pieces: vec![piece.clone()] })
    }

    pub fn precommit2(sector: SectorRef, pc1_out: &Bytes) -> TaskMessage {
        TaskMessage::new(sector, Task::Pc2 { pc1_out: pc1_out.clone() })
    }

    pub fn commit1(
        sector: SectorRef,
        ticket: [u8; 32],
        seed: [u8; 32],
        piece: &PieceInfo,
        cids: &SectorCids,
    ) -> TaskMessage {
        TaskMessage::new(
            sector,
            Task::C1 {
                ticket: Bytes(ticket.to_vec()),
                seed: Bytes(seed.to_vec()),
                pieces: vec![piece.clone()],
                cids: Box::new(cids.clone()),
            },
        )
    }

    pub fn commit2(sector: SectorRef, c1_out: &sealfarm_schemas::blob::Payload) -> TaskMessage {
        TaskMessage::new(sector, Task::C2 { c1_out: c1_out.clone() })
    }

    /// A random 32-byte ticket or seed.
    pub fn randomness() -> [u8; 32] {
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        out[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        out[31] &= 0x3f; // keep it a valid field element, as lotus' randomness is
        out
    }
}

/// Waits until each named worker has sent a heartbeat (it consumes then).
/// A private queue on `sealfarm.events` bound with `routing_key`
/// (`worker.*.heartbeat`, `worker.*.claim`, …); keep the connection alive.
pub async fn subscribe_events(vhost: &TestVhost, routing_key: &str) -> Result<(Connection, Consumer)> {
    let connection = Connection::connect(&vhost.url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    sealfarm_runtime::queues::declare(&channel).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            topology::EVENTS_EXCHANGE.into(),
            routing_key.into(),
            Default::default(),
            FieldTable::default(),
        )
        .await?;
    let events = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    Ok((connection, events))
}

/// Every task claim of the farm, as (worker, stage, sector number), collected
/// in the background from the claim events.
pub async fn collect_claims(vhost: &TestVhost) -> Result<(Connection, Arc<Mutex<Vec<(String, Stage, u64)>>>)> {
    let (connection, mut events) = subscribe_events(vhost, "worker.*.claim").await?;
    let claims = Arc::new(Mutex::new(Vec::new()));
    let sink = claims.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = events.next().await {
            if let Ok(event) = serde_json::from_slice::<sealfarm_schemas::EventMessage>(&delivery.data) {
                if let sealfarm_schemas::EventKind::Claim { stage, sector, .. } = event.event {
                    sink.lock().unwrap().push((event.worker, stage, sector.id.number));
                }
            }
        }
    });
    Ok((connection, claims))
}

pub async fn wait_for_workers(vhost: &TestVhost, workers: &[&str], timeout: Duration) -> Result<()> {
    let (connection, mut events) = subscribe_events(vhost, "worker.*.heartbeat").await?;
    let mut missing: Vec<&str> = workers.to_vec();
    let deadline = Instant::now() + timeout;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(Ok(delivery))) = tokio::time::timeout(left, events.next()).await else {
            bail!("no heartbeat from {missing:?} within {timeout:?}");
        };
        if let Ok(event) = serde_json::from_slice::<sealfarm_schemas::EventMessage>(&delivery.data) {
            missing.retain(|w| *w != event.worker);
        }
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// The results queue of the bridge of devminer's default actor (t01000):
/// what a [`BridgeFarm`]'s bridge consumes.
pub const BRIDGE_RESULTS: &str = "sealfarm.bridge.t01000.results";
/// That bridge's copy of the worker events.
pub const BRIDGE_EVENTS: &str = "sealfarm.bridge.t01000.events";

/// A miner stand-in and a bridge registered with it, on a private vhost:
/// the starting point of every bridge test.
pub struct BridgeFarm {
    pub vhost: TestVhost,
    pub dir: tempfile::TempDir,
    pub miner: std::sync::Arc<devminer::DevMiner>,
    pub miner_address: std::net::SocketAddr,
    /// Where the current bridge listens.
    pub listen: std::net::SocketAddr,
    pub bridge: FarmProcess,
    /// The bridge as the miner registered it.
    pub worker: std::sync::Arc<devminer::ConnectedWorker>,
}

impl BridgeFarm {
    /// Starts devminer (2 KiB sectors) and a bridge, and waits for the registration.
    pub async fn start(label: &str) -> Self {
        Self::start_with(label, &[]).await
    }

    /// As [`BridgeFarm::start`], with more `sealfarm-bridge run` arguments.
    pub async fn start_with(label: &str, bridge_args: &[&str]) -> Self {
        Self::start_sized(label, sealfarm_schemas::SectorSize::KIB2, bridge_args).await
    }

    /// As [`BridgeFarm::start_with`], for a miner of another sector size.
    pub async fn start_sized(label: &str, size: sealfarm_schemas::SectorSize, bridge_args: &[&str]) -> Self {
        Self::start_in(TestVhost::new(label), size, bridge_args).await
    }

    /// As [`BridgeFarm::start_sized`], on a vhost of the caller's (a cluster's, say).
    pub async fn start_in(vhost: TestVhost, size: sealfarm_schemas::SectorSize, bridge_args: &[&str]) -> Self {
        Self::start_trusting(vhost, size, None, bridge_args).await
    }

    /// [`BridgeFarm::start_in`] with a miner that trusts the CA in `ca`
    /// (for a bridge that serves HTTPS).
    pub async fn start_trusting(
        vhost: TestVhost,
        size: sealfarm_schemas::SectorSize,
        ca: Option<&Path>,
        bridge_args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let miner = devminer::DevMiner::new(size.0);
        if let Some(ca) = ca {
            miner.trust(ca);
        }
        let miner_address = miner.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let listen = free_local_address();
        let bridge = FarmProcess::start_bridge(&vhost, dir.path(), &miner.api_info(miner_address), listen, bridge_args);
        let worker = miner
            .wait_for_worker(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}\nbridge log:\n{}", bridge.log_text()));
        BridgeFarm { vhost, dir, miner, miner_address, listen, bridge, worker }
    }

    /// Starts a worker for 2 KiB sectors on the bridge's shared storage.
    pub fn start_worker(&self, id: &str, stages: &str) -> FarmProcess {
        self.start_worker_with(id, stages, "2KiB", &[])
    }

    /// Starts a worker on the bridge's shared storage with its sizes and more arguments.
    pub fn start_worker_with(&self, id: &str, stages: &str, sizes: &str, extra: &[&str]) -> FarmProcess {
        FarmProcess::start_for_bridge(&self.vhost, self.dir.path(), self.listen, id, stages, sizes, extra)
    }

    /// The bridge's state directory (call store, tokens, `api`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state-bridge")
    }

    /// The status API's `read` or `admin` token.
    pub fn token(&self, which: &str) -> String {
        std::fs::read_to_string(self.state_dir().join(format!("token-{which}"))).unwrap().trim().to_string()
    }

    /// Runs `sealfarm-bridge ARGS` as an operator on the bridge's host would
    /// (URL and admin token from the state directory).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary("sealfarm-bridge"))
            .args(args)
            .env("SEALFARM_STATE_DIR", self.state_dir())
            .env_remove("SEALFARM_TOKEN")
            .env_remove("SEALFARM_BRIDGE_URL")
            .output()
            .unwrap()
    }

    /// [`BridgeFarm::cli`] that must succeed; its standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "sealfarm-bridge {args:?} failed:\n{stdout}\n{stderr}");
        stdout.into_owned()
    }

    /// The JSON `sealfarm-bridge ARGS --json` prints.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.cli_ok(&args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {text}"))
    }

    /// Polls `sealfarm-bridge ARGS --json` until `ok` holds; the JSON that passed.
    pub async fn wait_json(
        &self,
        args: &[&str],
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let value = self.cli_json(args);
            if ok(&value) {
                return value;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "{args:?} never showed what was expected within {timeout:?}:\n{value:#}\nbridge log:\n{}",
                    self.bridge.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Starts a new bridge process (same state directory, a new port); the
    /// old one should be dead already.
    pub fn start_bridge_again(&mut self) {
        self.listen = free_local_address();
        self.bridge = FarmProcess::start_bridge(
            &self.vhost,
            self.dir.path(),
            &self.miner.api_info(self.miner_address),
            self.listen,
            &[],
        );
    }
}

/// `count` AddPiece calls through the farm, `window` in flight; calls per second.
pub async fn farm_round_trips(
    miner: &std::sync::Arc<devminer::DevMiner>,
    worker: &std::sync::Arc<devminer::ConnectedWorker>,
    number: &mut u64,
    count: usize,
    window: usize,
) -> Result<f64> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(window));
    let started = std::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..count {
        let permit = slots.clone().acquire_owned().await?;
        // A failed call ends the run at once rather than after every other one.
        while let Some(done) = calls.try_join_next() {
            done??;
        }
        let sector = devminer::sector_ref(*number, sealfarm_schemas::RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
        *number += 1;
        let (miner, worker) = (miner.clone(), worker.clone());
        calls.spawn(async move {
            let call: sealfarm_schemas::CallId =
                worker.client.call("AddPiece", devminer::add_piece_params(sector)).await.context("AddPiece")?;
            miner.wait_for_return(&call, Duration::from_secs(30)).await?;
            drop(permit);
            anyhow::Ok(())
        });
    }
    while let Some(done) = calls.join_next().await {
        done??;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}
