//! The farm on a three-node RabbitMQ cluster (`scripts/rabbitmq-cluster`):
//! a node dies with SIGKILL (first the one that leads the queues, then the
//! one the bridge is connected to) or is restarted in a rolling upgrade
//! (`rabbitmq-upgrade drain`, stop, start),
//! while two workers seal 2 KiB sectors and a stream of AddPiece calls runs.
//! Every call is returned exactly once, the proofs verify, and the farm
//! keeps returning calls while the node is down. The longest wait of a call
//! around the failure is printed (docs/BENCHMARKS.md: "Broker failover").
//!
//! The scenarios share the cluster, so they run one at a time; the cluster
//! is left running for the next run (`scripts/rabbitmq-cluster down` stops it).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sealfarm_schemas::{RegisteredSealProof, SectorSize};
use sealfarm_tests::devminer::{add_piece_params, sector_ref};
use sealfarm_tests::{BridgeFarm, FarmProcess, TestVhost};

const PROOF: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;
const STAGES: &str = "ap,pc1,pc2,c1,c2,fin,ru";

/// One scenario at a time: they kill and restart the same nodes.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster(args: &[&str], vhost: &TestVhost) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster");
    let out = Command::new(script).args(args).env("VHOST", &vhost.name).output().expect("the cluster script runs");
    assert!(out.status.success(), "scripts/rabbitmq-cluster {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Starts a node again if the scenario ends (or fails) while it is down.
struct NodeDown<'a> {
    node: usize,
    vhost: &'a TestVhost,
}

impl Drop for NodeDown<'_> {
    fn drop(&mut self) {
        cluster(&["start", &self.node.to_string()], self.vhost);
    }
}

/// The nodes' URLs in the order given (1-based node numbers).
fn order(vhost: &TestVhost, nodes: [usize; 3]) -> String {
    nodes.iter().map(|n| vhost.node_url(n - 1)).collect::<Vec<_>>().join(",")
}

/// Declares the farm's queues from node `leader`, so that node leads them
/// (RabbitMQ places a quorum queue's leader on the declaring node).
async fn declare_from(vhost: &TestVhost, leader: usize) {
    let connection =
        lapin::Connection::connect(&vhost.node_url(leader - 1), lapin::ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    sealfarm_runtime::queues::declare(&channel).await.unwrap();
    let _ = connection.close(200, "declared".into()).await;
}

/// AddPiece calls one after another until `stop`; each call's start and wait.
async fn add_piece_stream(farm: &BridgeFarm, stop: &AtomicBool, waits: &Mutex<Vec<(Instant, Duration)>>) {
    let mut number = 1000;
    while !stop.load(Ordering::Relaxed) {
        number += 1;
        let started = Instant::now();
        let call = loop {
            match farm.worker.client.call("AddPiece", add_piece_params(sector_ref(number, PROOF))).await {
                Ok(call) => break call,
                Err(err) => {
                    assert!(started.elapsed() < Duration::from_secs(120), "the bridge refuses AddPiece: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let returned = farm
            .miner
            .wait_for_return(&call, Duration::from_secs(180))
            .await
            .unwrap_or_else(|e| panic!("{e}\nbridge:\n{}", farm.bridge.log_text()));
        assert!(returned.params[2].is_null(), "AddPiece {number} failed: {}", returned.params[2]);
        waits.lock().unwrap().push((started, started.elapsed()));
        // A steady trickle, not a flood: the cores are the C2s' too.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What happens to node `victim` while the farm runs.
#[derive(Clone, Copy)]
enum Failure {
    Kill,
    RollingRestart,
}

/// A bridge and two workers on the cluster (URL orders given; the queues
/// declared from `leader`), two sectors sealed and an AddPiece stream while
/// node `victim` fails; checks every call and prints the longest wait.
async fn farm_survives(
    label: &str,
    leader: usize,
    bridge: [usize; 3],
    workers: [[usize; 3]; 2],
    victim: usize,
    failure: Failure,
) {
    let _one_at_a_time = CLUSTER.lock().await;
    let vhost = TestVhost::on_cluster(label);
    declare_from(&vhost, leader).await;
    let bridge_urls = order(&vhost, bridge);
    let worker_urls = workers.map(|w| order(&vhost, w));
    let farm = BridgeFarm::start_in(vhost, SectorSize::KIB2, &["--amqp", &bridge_urls]).await;
    let vhost = &farm.vhost;
    let queue = "sealfarm.task.pc1.2KiB";
    let leader_node = cluster(&["leader", queue], vhost);
    assert_eq!(leader_node, format!("sf{leader}@localhost"), "{queue} is led by the node it was declared on");
    let members = vhost.rabbitmqctl(&["list_queues", "-p", &vhost.name, "name", "members", "--no-table-headers"]);
    let line = members.lines().find(|l| l.starts_with(queue)).unwrap_or_else(|| panic!("{queue} listed: {members}"));
    assert_eq!(line.matches("@localhost").count(), 3, "{queue} has a member on every node: {line}");
    let workers: Vec<FarmProcess> = worker_urls
        .iter()
        .enumerate()
        .map(|(i, urls)| farm.start_worker_with(&format!("w{}", i + 1), STAGES, "2KiB", &["--amqp", urls]))
        .collect();
    sealfarm_tests::wait_for_workers(&farm.vhost, &["w1", "w2"], Duration::from_secs(60)).await.unwrap();

    let stop = AtomicBool::new(false);
    let waits = Mutex::new(Vec::new());
    let failed_at = Mutex::new(None::<(Instant, Instant)>);
    let seals = async {
        let (one, two) = tokio::join!(
            farm.miner.seal_cc(&farm.worker, sector_ref(1, PROOF), Duration::from_secs(600)),
            farm.miner.seal_cc(&farm.worker, sector_ref(2, PROOF), Duration::from_secs(600)),
        );
        stop.store(true, Ordering::Relaxed);
        (one, two)
    };
    let fail = async {
        // Mid-pipeline: the sectors are past PC1 (2 KiB) or in C2 by now.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let down = NodeDown { node: victim, vhost: &farm.vhost };
        let at = Instant::now();
        match failure {
            Failure::Kill => cluster(&["kill", &victim.to_string()], &farm.vhost),
            Failure::RollingRestart => {
                // As an operator upgrades a node: maintenance mode first (its
                // queue leaders move away, its clients reconnect elsewhere), then stop.
                cluster(&["drain", &victim.to_string()], &farm.vhost);
                cluster(&["stop", &victim.to_string()], &farm.vhost)
            }
        };
        // The farm works on without the node for a while.
        tokio::time::sleep(Duration::from_secs(15)).await;
        let back = Instant::now();
        drop(down);
        *failed_at.lock().unwrap() = Some((at, back));
    };
    let ((one, two), (), ()) = tokio::join!(seals, fail, add_piece_stream(&farm, &stop, &waits));
    let logs = || {
        let mut text = format!("bridge:\n{}", farm.bridge.log_text());
        for w in &workers {
            text.push_str(&format!("\nworker:\n{}", w.log_text()));
        }
        text
    };
    for report in [one, two] {
        let report = report.unwrap_or_else(|e| panic!("{e:#}\n{}", logs()));
        assert!(report.verified, "the proof of sector {} verifies", report.sector.id);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(farm.miner.duplicate_returns().is_empty(), "returned twice: {:?}", farm.miner.duplicate_returns());

    // While the node was down, calls were still returned.
    let (at, back) = failed_at.lock().unwrap().expect("the node failed");
    let waits = waits.lock().unwrap();
    let during = waits.iter().filter(|(started, wait)| *started > at && *started + *wait < back).count();
    assert!(during > 0, "no AddPiece was returned while node {victim} was down\n{}", logs());
    // The farm stood still for at most the longest wait of a call in flight at the failure.
    let stall = waits
        .iter()
        .filter(|(started, wait)| *started + *wait > at && *started < back)
        .map(|(_, wait)| *wait)
        .max()
        .unwrap_or_default();
    let rejoined = farm.vhost.rabbitmqctl(&["eval", "length(rabbit_nodes:all_running())."]);
    assert_eq!(rejoined.trim(), "3", "node {victim} is back in the cluster");
    println!(
        "{label}: node {victim} {}: longest AddPiece wait around it {} ms; {during} calls returned while it was down; {} calls in all",
        match failure {
            Failure::Kill => "killed (SIGKILL)",
            Failure::RollingRestart => "drained, stopped and started again",
        },
        stall.as_millis(),
        waits.len()
    );
}

/// The node leading every task queue dies; no process is connected to it.
#[tokio::test(flavor = "multi_thread")]
async fn the_farm_carries_on_when_the_queues_leader_is_killed() {
    farm_survives("cluster-leader", 1, [2, 3, 1], [[3, 2, 1], [2, 3, 1]], 1, Failure::Kill).await;
}

/// The node the bridge (and one worker) is connected to dies; the queues are led elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn the_farm_carries_on_when_the_bridges_node_is_killed() {
    farm_survives("cluster-connected", 3, [1, 2, 3], [[1, 3, 2], [3, 2, 1]], 1, Failure::Kill).await;
}

/// A rolling restart: the bridge's node is stopped, started and rejoins.
#[tokio::test(flavor = "multi_thread")]
async fn the_farm_carries_on_through_a_rolling_restart() {
    farm_survives("cluster-rolling", 2, [2, 1, 3], [[2, 3, 1], [1, 3, 2]], 2, Failure::RollingRestart).await;
}
