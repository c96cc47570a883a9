//! The broker users of deploy/rabbitmq (definitions.json and add-worker):
//! a farm runs on them with the least each role needs, each account is
//! refused what it must not do, and messages published by the wrong
//! account are refused by whoever receives them, logged and counted.
//!
//! Accounts: the bridge's and the monitor's with the permissions
//! definitions.json gives them, two workers made by `add-worker` (an honest
//! one that seals, and a compromised one that forges), and `guest` (full
//! rights on the vhost, but not the bridge's user).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use sealfarm_schemas::messages::now_ms;
use sealfarm_schemas::topology;
use sealfarm_schemas::{
    CallError, Control, ControlMessage, ErrorCode, Outcome, RegisteredSealProof, ResultMessage, SectorSize, Stage,
    SCHEMA_VERSION,
};
use sealfarm_tests::devminer::{add_piece_params, sector_ref};
use sealfarm_tests::{BridgeFarm, TestVhost};
use serde_json::json;

const PASSWORD: &str = "sealfarm-test-password";

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The permissions definitions.json gives `user`: (configure, write, read).
fn shipped_permissions(user: &str) -> (String, String, String) {
    let text = std::fs::read_to_string(repo("deploy/rabbitmq/definitions.json")).unwrap();
    let definitions: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = definitions["permissions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user"] == user)
        .unwrap_or_else(|| panic!("definitions.json gives {user} permissions"));
    let field = |name: &str| entry[name].as_str().unwrap().to_string();
    (field("configure"), field("write"), field("read"))
}

/// A broker user for this test with the shipped permissions of `role`.
struct User {
    name: String,
}

impl User {
    fn shipped(vhost: &TestVhost, role: &str, name: String) -> Self {
        let _ = vhost.rabbitmqctl_output(&["delete_user", &name]);
        vhost.rabbitmqctl(&["add_user", &name, PASSWORD]);
        let (configure, write, read) = shipped_permissions(role);
        vhost.rabbitmqctl(&["set_permissions", "-p", &vhost.name, &name, &configure, &write, &read]);
        User { name }
    }

    /// A worker's user, made by deploy/rabbitmq/add-worker.
    fn worker(vhost: &TestVhost, id: &str) -> Self {
        let mut child = Command::new(repo("deploy/rabbitmq/add-worker"))
            .args(["-p", &vhost.name, id])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
        assert!(child.wait().unwrap().success(), "add-worker {id} failed");
        User { name: format!("worker-{id}") }
    }

    fn url(&self, vhost: &TestVhost) -> String {
        format!("amqp://{}:{PASSWORD}@{}/{}", self.name, sealfarm_tests::BROKER, vhost.name)
    }
}

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["delete_user", &self.name]).output();
    }
}

/// Publishes `body` as `url`'s user (stamped with `user_id`, as sealfarm
/// does; None: unstamped); Err with the broker's words when refused.
async fn publish(url: &str, user_id: Option<&str>, exchange: &str, key: &str, body: &[u8]) -> Result<(), String> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.map_err(|e| e.to_string())?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
    let mut properties = BasicProperties::default().with_delivery_mode(2);
    if let Some(user) = user_id {
        properties = properties.with_user_id(user.into());
    }
    let sent = async {
        channel
            .basic_publish(exchange.into(), key.into(), BasicPublishOptions::default(), body, properties)
            .await?
            .await
    }
    .await;
    let _ = connection.close(200, "done".into()).await;
    match sent {
        Ok(confirm) if confirm.is_ack() => Ok(()),
        Ok(confirm) => Err(format!("not confirmed: {confirm:?}")),
        Err(err) => Err(err.to_string()),
    }
}

/// Consumes `queue` as `url`'s user; Err with the broker's words when refused.
async fn consume(url: &str, queue: &str) -> Result<(), String> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.map_err(|e| e.to_string())?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    let consumed = channel
        .basic_consume(queue.into(), "probe".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = connection.close(200, "done".into()).await;
    consumed
}

async fn declare(url: &str, queue: &str) -> Result<(), String> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.map_err(|e| e.to_string())?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    let _ = connection.close(200, "done".into()).await;
    declared
}

/// Takes the next message of `queue` (acknowledged), as a worker would.
async fn take(url: &str, queue: &str) -> sealfarm_schemas::TaskMessage {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        if let Some(message) = channel.basic_get(queue.into(), Default::default()).await.unwrap() {
            break message.delivery;
        }
        assert!(Instant::now() < deadline, "nothing in {queue}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    delivery.ack(Default::default()).await.unwrap();
    let _ = connection.close(200, "done".into()).await;
    serde_json::from_slice(&delivery.data).unwrap()
}

fn refused(outcome: Result<(), String>, what: &str) {
    let error = outcome.expect_err(&format!("{what} must be refused"));
    assert!(error.contains("ACCESS_REFUSED"), "{what}: refused by the broker's permissions, not {error}");
}

/// Polls `check` for up to `timeout`.
async fn eventually(timeout: Duration, what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn metrics(url: String) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_broker_user_does_its_work_and_forged_messages_are_refused() {
    let vhost = TestVhost::new("perm");
    let tag = vhost.name.rsplit('-').next().unwrap().to_string();
    let bridge = User::shipped(&vhost, "sealfarm-bridge", format!("sealfarm-bridge-{tag}"));
    let monitor = User::shipped(&vhost, "sealfarm-monitor", format!("sealfarm-monitor-{tag}"));
    let (honest_id, evil_id) = (format!("wh{tag}"), format!("we{tag}"));
    let honest = User::worker(&vhost, &honest_id);
    let evil = User::worker(&vhost, &evil_id);
    let guest = vhost.url();

    // The bridge declares the farm's queues as its own user; the honest worker
    // declares its own queue, takes AddPiece and publishes its result and
    // events with nothing more than add-worker gave it.
    let bridge_url = bridge.url(&vhost);
    let farm = BridgeFarm::start_in(vhost, SectorSize::KIB2, &["--amqp", &bridge_url]).await;
    let vhost = &farm.vhost;
    let worker = farm.start_worker_with(
        &honest_id,
        "ap",
        "2KiB",
        &["--amqp", &honest.url(vhost), "--bridge-user", &bridge.name],
    );
    let proof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;
    let call: sealfarm_schemas::CallId =
        farm.worker.client.call("AddPiece", add_piece_params(sector_ref(1, proof))).await.unwrap();
    let returned = farm
        .miner
        .wait_for_return(&call, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\nbridge:\n{}\nworker:\n{}", farm.bridge.log_text(), worker.log_text()));
    assert!(returned.params[2].is_null(), "AddPiece failed: {}", returned.params[2]);
    // The bridge's controls reach the worker (a drain, then a resume).
    assert!(farm.cli_ok(&["drain", &honest_id]).contains("drains"));
    farm.wait_json(&["workers"], Duration::from_secs(30), |v| v[0]["state"] == json!("draining")).await;
    farm.cli_ok(&["resume-worker", &honest_id]);
    farm.wait_json(&["workers"], Duration::from_secs(30), |v| v[0]["state"] == json!("enabled")).await;

    // What the permissions forbid, whoever tries.
    let evil_url = evil.url(vhost);
    let task_queue = topology::task_queue(Stage::Pc1, SectorSize::KIB2);
    refused(publish(&evil_url, Some(&evil.name), "", &task_queue, b"{}").await, "a worker publishing a task");
    refused(consume(&evil_url, sealfarm_tests::BRIDGE_RESULTS).await, "a worker reading the results");
    refused(consume(&evil_url, &topology::worker_queue(&honest_id)).await, "a worker reading another's queue");
    refused(declare(&evil_url, &task_queue).await, "a worker declaring a stage queue");
    let monitor_url = monitor.url(vhost);
    refused(publish(&monitor_url, Some(&monitor.name), "", &task_queue, b"{}").await, "the monitor publishing a task");
    refused(
        publish(&monitor_url, Some(&monitor.name), topology::EVENTS_EXCHANGE, "worker.x.heartbeat", b"{}").await,
        "the monitor publishing an event",
    );
    // RabbitMQ itself refuses a user_id that is not the publisher's.
    let spoofed = publish(&evil_url, Some(&honest.name), topology::RESULTS_EXCHANGE, "", b"{}").await;
    assert!(spoofed.unwrap_err().contains("PRECONDITION_FAILED"), "a user_id of another user is refused");

    // A forged result: the compromised worker's account speaks for the
    // honest worker on a call no worker serves (ReleaseUnsealed).
    let sector = sector_ref(1, proof);
    let open: sealfarm_schemas::CallId =
        farm.worker.client.call("ReleaseUnsealed", json!([sector, null])).await.unwrap();
    let forged = |worker: &str, attempt_token: Option<String>| ResultMessage {
        schema: SCHEMA_VERSION,
        call_id: open.id,
        attempt: 1,
        sector,
        stage: Stage::Ru,
        worker: worker.to_string(),
        storage_id: None,
        started_at_ms: now_ms(),
        finished_at_ms: now_ms(),
        outcome: Outcome::Failed(CallError::new(ErrorCode::UNKNOWN, "forged")),
        attempt_token,
    };
    let body = serde_json::to_vec(&forged(&honest_id, None)).unwrap();
    publish(&evil_url, Some(&evil.name), topology::RESULTS_EXCHANGE, "t01000", &body).await.unwrap();
    publish(&evil_url, None, topology::RESULTS_EXCHANGE, "t01000", &body).await.unwrap();
    // In its own name: a result for a task it was never handed (no attempt token).
    let own = serde_json::to_vec(&forged(&evil_id, None)).unwrap();
    publish(&evil_url, Some(&evil.name), topology::RESULTS_EXCHANGE, "t01000", &own).await.unwrap();
    // A forged heartbeat: the compromised worker's own id, its file server
    // outside the farm's networks (the files token would go there).
    let heartbeat = |worker: &str, files_url: &str| {
        serde_json::to_vec(&json!({
            "schema": SCHEMA_VERSION, "worker": worker, "at_ms": now_ms(), "kind": "heartbeat",
            "hostname": "evil", "stages": ["ap"], "sector_sizes": ["2KiB"], "slots": 1, "running": [],
            "files_url": files_url,
        }))
        .unwrap()
    };
    let key = format!("worker.{evil_id}.heartbeat");
    let foreign = heartbeat(&evil_id, "http://203.0.113.7:3457");
    publish(&evil_url, Some(&evil.name), topology::EVENTS_EXCHANGE, &key, &foreign).await.unwrap();
    // ... and one for the honest worker's id.
    let impostor = heartbeat(&honest_id, "http://127.0.0.1:3457");
    publish(&evil_url, Some(&evil.name), topology::EVENTS_EXCHANGE, &key, &impostor).await.unwrap();
    // A forged drain, from an account with every right but not the bridge's.
    let drain = serde_json::to_vec(&ControlMessage {
        schema: SCHEMA_VERSION,
        control: Control::Drain { reason: "forged".into() },
    })
    .unwrap();
    publish(&guest, Some("guest"), "", &topology::worker_queue(&honest_id), &drain).await.unwrap();

    let bridge_metrics = format!("http://{}/metrics", farm.listen);
    let wanted = [
        r#"sealfarm_refused_messages_total{miner="t01000",kind="result",reason="wrong_user"} 1"#,
        r#"sealfarm_refused_messages_total{miner="t01000",kind="result",reason="no_user_id"} 1"#,
        r#"sealfarm_refused_messages_total{miner="t01000",kind="result",reason="not_the_holder"} 1"#,
        r#"sealfarm_refused_messages_total{miner="t01000",kind="event",reason="files_url"} 1"#,
        r#"sealfarm_refused_messages_total{miner="t01000",kind="event",reason="wrong_user"} 1"#,
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(bridge_metrics.clone()).await;
        if wanted.iter().all(|w| text.contains(w)) {
            break;
        }
        assert!(Instant::now() < deadline, "the bridge counted every refusal:\n{text}\n{}", farm.bridge.log_text());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let log = farm.bridge.log_text();
    assert!(log.contains(&format!("broker user \"{}\" spoke for worker {honest_id}", evil.name)), "{log}");
    assert!(log.contains("outside the networks allowed for workers"), "{log}");
    eventually(Duration::from_secs(20), "the worker refuses the forged drain", || {
        worker.log_text().contains("control message refused")
    })
    .await;
    let metrics_url = worker
        .log_text()
        .lines()
        .find_map(|l| l.trim().strip_prefix("metrics").map(|u| u.trim().to_string()))
        .expect("the worker prints its metrics address");
    let worker_metrics = metrics(metrics_url).await;
    assert!(
        worker_metrics.contains(r#"sealfarm_worker_refused_controls_total{reason="not_the_bridge"} 1"#),
        "{worker_metrics}"
    );

    // Nothing forged took effect: the call is still open, the honest worker
    // takes tasks, the compromised one is not in the farm.
    assert!(farm.miner.returned(&open).is_none(), "a forged result reached the miner");
    let workers = farm.cli_json(&["workers"]);
    let ids: Vec<&str> = workers.as_array().unwrap().iter().filter_map(|w| w["id"].as_str()).collect();
    assert_eq!(ids, [honest_id.as_str()], "only the honest worker is in the farm");
    assert_eq!(workers[0]["state"], json!("enabled"), "the forged drain was not obeyed");
    assert_ne!(workers[0]["hostname"], json!("evil"), "the impostor's heartbeat was not taken");

    // Whoever is handed the task (here the test, taking it from its queue)
    // has its attempt token; with it, the honest worker's account is believed.
    let ru_queue = topology::task_queue(Stage::Ru, SectorSize::KIB2);
    let task = take(&guest, &ru_queue).await;
    assert_eq!(task.call_id, open.id);
    let token = task.attempt_token.clone();
    assert!(token.is_some(), "tasks are published with their attempt token");
    let body = serde_json::to_vec(&forged(&honest_id, token)).unwrap();
    publish(&honest.url(vhost), Some(&honest.name), topology::RESULTS_EXCHANGE, "t01000", &body).await.unwrap();
    let returned = farm.miner.wait_for_return(&open, Duration::from_secs(30)).await.unwrap();
    assert_eq!(returned.params[1]["Message"], json!("forged"), "{:?}", returned.params);
}
