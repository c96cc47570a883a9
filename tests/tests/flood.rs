//! A hostile or broken peer floods the bridge's queues while a real sector
//! seals through it (issue 20): 100,000 heartbeats from 50,000 made-up
//! worker ids and 10,000 malformed messages on the bridge's results and
//! events queues. The sector's calls are returned exactly once
//! with a verified proof, the bridge's registry and memory stay bounded,
//! and every malformed message is in `sealfarm.dead-letters` with its
//! reason. The figures it prints (RSS, CPU) are in docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use sealfarm_schemas::messages::{EventKind, EventMessage};
use sealfarm_schemas::topology;
use sealfarm_schemas::RegisteredSealProof;
use sealfarm_tests::devminer::sector_ref;
use sealfarm_tests::{memory_mib, BridgeFarm};

const HEARTBEATS: usize = 100_000;
const MADE_UP_IDS: usize = 50_000;
const MALFORMED: usize = 10_000;
/// The bridge's resident memory after the flood stays below this: 37 MiB
/// was measured here, from 22 MiB before (docs/BENCHMARKS.md, "Flood").
/// The registry holds at most 10,000 workers whatever arrives, so the bound
/// does not grow with the flood; before the cap, 20,000 new ids alone grew
/// the bridge by 25 MiB and `workers` listed every one.
const RSS_BOUND_MIB: f64 = 80.0;

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

/// Publishes `bodies` to `queue`, confirms awaited a batch at a time.
async fn flood(channel: &lapin::Channel, queue: &str, bodies: impl Iterator<Item = Vec<u8>>) {
    let mut pending = Vec::new();
    for body in bodies {
        let properties = BasicProperties::default().with_user_id("guest".into());
        let confirm = channel
            .basic_publish("".into(), queue.into(), BasicPublishOptions::default(), &body, properties)
            .await
            .expect("published");
        pending.push(confirm);
        if pending.len() == 1000 {
            for confirm in pending.drain(..) {
                assert!(confirm.await.expect("confirmed").is_ack(), "the broker took the message");
            }
        }
    }
    for confirm in pending {
        assert!(confirm.await.expect("confirmed").is_ack());
    }
}

/// Waits until the bridge has taken everything from its event and result queues.
async fn worked_through(farm: &BridgeFarm) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let queued = farm.vhost.rabbitmqctl(&["list_queues", "name", "messages"]);
        let busy = queued.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (name, count) = (f.next().unwrap_or(""), f.next().unwrap_or("0"));
            (name == sealfarm_tests::BRIDGE_EVENTS || name == sealfarm_tests::BRIDGE_RESULTS) && count != "0"
        });
        if !busy {
            return;
        }
        assert!(Instant::now() < deadline, "the bridge did not work through the flood in 300 s:\n{queued}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn heartbeat(id: &str) -> Vec<u8> {
    let event = EventMessage::new(
        id,
        EventKind::Heartbeat {
            hostname: "nowhere".into(),
            stages: Vec::new(),
            sector_sizes: Vec::new(),
            slots: 0,
            running: Vec::new(),
            capacity: Vec::new(),
            hardware: None,
            storage_id: None,
            files_url: None,
            draining: false,
            warming: Vec::new(),
            in_use: None,
        },
    );
    serde_json::to_vec(&event).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_heartbeats_and_garbage_leaves_a_sealing_sector_and_the_bridge_whole() {
    let farm = BridgeFarm::start("flood").await;
    let _worker = farm.start_worker("w-real", "ap,pc1,pc2,c1,c2,fin,ru");
    sealfarm_tests::wait_for_workers(&farm.vhost, &["w-real"], Duration::from_secs(60)).await.unwrap();
    let pid = farm.bridge.pid();
    let rss_before = memory_mib(pid, "VmRSS:");
    let cpu_before = cpu_seconds(pid);

    // The sector seals while the flood runs.
    let miner = farm.miner.clone();
    let worker = farm.worker.clone();
    let sealing = tokio::spawn(async move {
        miner
            .seal_cc(&worker, sector_ref(1, RegisteredSealProof::STACKED_DRG_2KIB_V1_1), Duration::from_secs(900))
            .await
    });

    let connection = lapin::Connection::connect(&farm.vhost.url(), Default::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    let started = Instant::now();
    let heartbeats = || (0..MADE_UP_IDS).map(|n| heartbeat(&format!("made-up-{n:05}")));
    let garbage = |queue: &'static str| (0..MALFORMED / 2).map(move |n| format!("{{not json {queue} {n}").into_bytes());
    let (events_channel, results_channel) =
        (connection.create_channel().await.unwrap(), connection.create_channel().await.unwrap());
    events_channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    results_channel.confirm_select(ConfirmSelectOptions::default()).await.unwrap();
    // The malformed messages first, then two rounds of a heartbeat from
    // every made-up id, each sent once the bridge has worked through what
    // came before. The bridge's event queue is bounded (drop-head: a bridge
    // that is away must not make it grow without end), and RabbitMQ 3.10.8
    // was seen to drop from it, far below its 100,000 bound, when a fast
    // burst met a slow consumer: of 5,000 malformed events published in one
    // pipelined burst, 3,177 were dropped there before the bridge could
    // dead-letter them (rabbitmq_global_messages_dead_lettered_maxlen_total;
    // docs/BENCHMARKS.md, "Flood"). So the malformed events go in batches of
    // 250, each once the bridge has taken the one before; the results queue
    // (unbounded) takes its 5,000 in one burst.
    let events_garbage: Vec<Vec<u8>> = garbage(sealfarm_tests::BRIDGE_EVENTS).collect();
    let in_batches = async {
        for batch in events_garbage.chunks(250) {
            flood(&events_channel, sealfarm_tests::BRIDGE_EVENTS, batch.iter().cloned()).await;
            worked_through(&farm).await;
        }
    };
    let ((), ()) = tokio::join!(
        in_batches,
        flood(&results_channel, sealfarm_tests::BRIDGE_RESULTS, garbage(sealfarm_tests::BRIDGE_RESULTS))
    );
    worked_through(&farm).await;
    let rss_garbage = memory_mib(pid, "VmRSS:");
    for _round in 0..HEARTBEATS / MADE_UP_IDS {
        flood(&channel, sealfarm_tests::BRIDGE_EVENTS, heartbeats()).await;
        worked_through(&farm).await;
    }
    let drained_in = started.elapsed();
    let cpu_flood = cpu_seconds(pid) - cpu_before;

    // The registry stays bounded: the real worker and at most 10,000 others.
    let workers = farm.cli_json(&["workers"]);
    let known = workers.as_array().map_or(0, Vec::len);
    assert!(known <= 10_001, "the bridge lists {known} workers");
    let listed = |id: &str| workers.as_array().is_some_and(|w| w.iter().any(|w| w["id"] == id));
    assert!(listed("w-real"), "the real worker, which takes stages, is not the one forgotten");

    // A scrape after the flood: workers that take nothing have no queue to
    // look up (a failed broker lookup each, before), so no row names one.
    let scraped = Instant::now();
    let metrics = reqwest::get(format!("http://{}/metrics", farm.listen)).await.unwrap().text().await.unwrap();
    let scrape_ms = scraped.elapsed().as_millis();
    assert!(!metrics.contains("queue=\"sealfarm.worker.made-up-"), "a made-up worker's queue was looked up");
    assert!(metrics.contains("queue=\"sealfarm.worker.w-real\""), "the real worker's queue is shown");

    // The sector: every call returned once, the proof verified.
    let report = sealing.await.unwrap().unwrap_or_else(|e| panic!("{e:#}\n{}", farm.bridge.log_text()));
    assert!(report.verified, "the proof verifies");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(farm.miner.duplicate_returns().is_empty(), "returned twice: {:?}", farm.miner.duplicate_returns());

    // Every malformed message is a dead letter with its reason.
    let dead = sealfarm_tests::dead_letters(&connection, MALFORMED, Duration::from_secs(60)).await.unwrap();
    let malformed =
        dead.iter().filter(|(reason, d)| reason.starts_with("malformed:") && d.data.starts_with(b"{not json")).count();
    if malformed != MALFORMED {
        let log = farm.bridge.log_text();
        let lines = |queue: &str| {
            log.lines().filter(|l| l.contains("undecodable message dead-lettered") && l.contains(queue)).count()
        };
        let metrics = reqwest::get(format!("http://{}/metrics", farm.listen)).await.unwrap().text().await.unwrap();
        let undecodable: Vec<&str> = metrics.lines().filter(|l| l.starts_with("sealfarm_undecodable")).collect();
        panic!(
            "{malformed} of {MALFORMED} malformed messages are dead letters ({} dead letters in all); the bridge logged \
             {} from results, {} from events; metrics {undecodable:?}; queues {}",
            dead.len(),
            lines(sealfarm_tests::BRIDGE_RESULTS),
            lines(sealfarm_tests::BRIDGE_EVENTS),
            farm.vhost.rabbitmqctl(&["list_queues", "name", "messages"])
        );
    }
    for queue in [sealfarm_tests::BRIDGE_EVENTS, sealfarm_tests::BRIDGE_RESULTS] {
        let from = dead
            .iter()
            .filter(|(_, d)| {
                sealfarm_runtime::broker::header(d, topology::SOURCE_QUEUE_HEADER).as_deref() == Some(queue)
            })
            .count();
        assert_eq!(from, MALFORMED / 2, "dead letters from {queue}");
    }

    // Memory after the flood, once the bridge settled.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_after = memory_mib(pid, "VmRSS:");
    let peak = memory_mib(pid, "VmHWM:");
    let cpu_after = cpu_seconds(pid) - cpu_before - cpu_flood;
    eprintln!(
        "flood: {MALFORMED} malformed messages, then {HEARTBEATS} heartbeats ({MADE_UP_IDS} ids) in {} rounds, \
         published and worked through in {:.1} s; bridge RSS {rss_before:.1} MiB before, {rss_garbage:.1} after the malformed ones, \
         peak {peak:.1}, {rss_after:.1} after; CPU {cpu_flood:.1} s during the flood, {cpu_after:.1} s after; \
         {known} workers listed; a /metrics scrape took {scrape_ms} ms ({} KiB)",
        HEARTBEATS / MADE_UP_IDS,
        drained_in.as_secs_f64(),
        metrics.len() / 1024
    );
    assert!(rss_after < RSS_BOUND_MIB, "the bridge holds {rss_after:.1} MiB after the flood");
}
