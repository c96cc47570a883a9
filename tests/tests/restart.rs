//! A worker restarted between two tasks picks up the second; nothing is
//! consumed twice, not even a task delivered again after it was done.

use std::time::Duration;

use sealfarm_schemas::{Outcome, RegisteredSealProof, StageOutput};
use sealfarm_tests::{binary, cc, FarmProcess, Publisher, TestVhost};

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_takes_the_next_task_and_runs_nothing_twice() {
    let vhost = TestVhost::new("restart");
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let p2k = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;

    let mut worker = FarmProcess::start(&vhost, dir.path(), "w-restart", "ap", "2KiB");
    let first = cc::add_piece(cc::sector(1, p2k));
    publisher.publish(&first).await.unwrap();
    let (result, _) = publisher.result_of(&first, Duration::from_secs(60)).await.unwrap();
    assert!(matches!(result.outcome, Outcome::Done(StageOutput::Ap { .. })));
    // Its start-up table shows the probe (PoCL's CPU device: scripts/setup installs it).
    assert!(worker.log_text().contains("Portable Computing Language"), "{}", worker.log_text());
    let status = worker.terminate(Duration::from_secs(30));
    assert!(status.success(), "SIGTERM should stop the worker cleanly, got {status}");

    // While no worker runs, the second task waits in its queue.
    let second = cc::add_piece(cc::sector(2, p2k));
    publisher.publish(&second).await.unwrap();
    // The first task delivered again (as after a lost ack) must not run again.
    publisher.publish(&first).await.unwrap();

    let mut worker = FarmProcess::start(&vhost, dir.path(), "w-restart", "ap", "2KiB");
    let (result, others) = publisher.result_of(&second, Duration::from_secs(60)).await.unwrap();
    assert!(matches!(result.outcome, Outcome::Done(StageOutput::Ap { .. })), "{:?}", result.outcome);
    let mut late = others;
    late.extend(publisher.drain_results(Duration::from_secs(3)).await);
    assert!(late.is_empty(), "results beyond one per call: {late:?}");
    assert!(worker.terminate(Duration::from_secs(30)).success());

    // The job store holds each call once, both done.
    let out = std::process::Command::new(binary("sealfarm-worker"))
        .args(["jobs", "--state-dir"])
        .arg(dir.path().join("state-w-restart"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 2, "{listing}");
    for task in [&first, &second] {
        let line = lines.iter().find(|l| l.starts_with(&task.call_id.to_string())).expect("job listed");
        assert!(line.ends_with("done"), "{line}");
    }
}
