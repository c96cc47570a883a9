//! Logs an operator can search (issue 6, item 5): with `--log-format json`
//! the worker writes one JSON object per line, and every line about a job —
//! the worker's own and the proofs library's, from the executor process —
//! names the job's call id and sector.

use std::time::Duration;

use sealfarm_schemas::{Outcome, RegisteredSealProof, StageOutput, TaskMessage};
use sealfarm_tests::{cc, FarmProcess, Publisher, TestVhost};
use serde_json::Value;

async fn run(publisher: &mut Publisher, task: &TaskMessage) -> StageOutput {
    publisher.publish(task).await.unwrap();
    let (result, _) = publisher.result_of(task, Duration::from_secs(120)).await.unwrap();
    match result.outcome {
        Outcome::Done(output) => output,
        Outcome::Failed(err) => panic!("{} failed: {err}", task.stage()),
    }
}

/// The call id and sector a log line names, in its own fields or its span.
fn job_of(line: &Value) -> Option<(String, String)> {
    let named =
        |place: &Value| Some((place.get("call_id")?.as_str()?.to_string(), place.get("sector")?.as_str()?.to_string()));
    named(&line["fields"]).or_else(|| named(&line["span"]))
}

#[tokio::test(flavor = "multi_thread")]
async fn json_log_lines_about_a_job_name_its_call_and_sector() {
    let vhost = TestVhost::new("logs");
    let dir = tempfile::tempdir().unwrap();
    let mut publisher = Publisher::connect(&vhost).await.unwrap();
    let worker = FarmProcess::start_with(&vhost, dir.path(), "w-logs", "ap,pc1", "2KiB", &["--log-format", "json"]);
    let sector = cc::sector(1, RegisteredSealProof::STACKED_DRG_2KIB_V1_1);
    let ap = cc::add_piece(sector);
    let StageOutput::Ap { piece } = run(&mut publisher, &ap).await else { panic!("AP output expected") };
    let pc1 = cc::precommit1(sector, cc::randomness(), &piece);
    run(&mut publisher, &pc1).await;

    let log = worker.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect();
    let message = |line: &Value| line["fields"]["message"].as_str().unwrap_or_default().to_string();
    assert!(lines.iter().any(|l| message(l) == "sealfarm-worker w-logs"), "the start-up table is logged too");
    let sector_name = sector.id.to_string();
    for task in [&ap, &pc1] {
        let about: Vec<&Value> =
            lines.iter().filter(|l| job_of(l).is_some_and(|(id, _)| id == task.call_id.to_string())).collect();
        for wanted in ["claimed", "job done"] {
            assert!(about.iter().any(|l| message(l) == wanted), "no {wanted:?} line for {}:\n{log}", task.stage());
        }
        assert!(about.iter().all(|l| job_of(l).unwrap().1 == sector_name));
    }
    // The proofs library's lines, written in the executor process, carry the job's span.
    let library = lines.iter().find(|l| message(l).starts_with("seal_pre_commit_phase1:start")).expect("PC1 logs");
    assert_eq!(job_of(library), Some((pc1.call_id.to_string(), sector_name.clone())), "{library}");
    // Lines of the job-handling code name a job whenever they are about one.
    for line in &lines {
        let text = message(line);
        if ["claimed", "job done", "job failed", "PC1 layer finished"].contains(&text.as_str()) {
            assert!(job_of(line).is_some(), "a job line without its call and sector: {line}");
        }
    }
}
