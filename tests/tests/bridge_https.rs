//! The bridge's listener over HTTPS (`--tls-cert`/`--tls-key`), with a CA
//! and a certificate for 127.0.0.1 this test makes with openssl.
//!
//! What a storage provider relies on: the miner registers the bridge at an
//! https:// URL and reaches it through its CA; a worker given `--bridge-ca`
//! uploads its C1 output and fetches its C2 input over TLS and the sector's
//! proof verifies; the operator commands on the bridge's host work with no
//! flag (they trust the certificate the bridge wrote beside its `api` file);
//! and nothing is served in plain text, nor to a client that trusts another CA.

use std::time::Duration;

use sealfarm_schemas::{RegisteredSealProof, SectorSize};
use sealfarm_tests::devminer::sector_ref;
use sealfarm_tests::{BridgeFarm, FarmProcess, TestVhost};

#[tokio::test(flavor = "multi_thread")]
async fn a_sector_is_sealed_through_a_bridge_that_serves_https() {
    let pki = tempfile::tempdir().unwrap();
    sealfarm_tests::pki::make(pki.path(), "IP:127.0.0.1", "unused");
    let file = |name: &str| pki.path().join(name).display().to_string();
    let (ca, cert, key) = (pki.path().join("ca.pem"), file("server.pem"), file("server.key"));
    let vhost = TestVhost::new("bridge-https");
    let farm =
        BridgeFarm::start_trusting(vhost, SectorSize::KIB2, Some(&ca), &["--tls-cert", &cert, "--tls-key", &key]).await;
    // The miner reached the bridge through its CA at an https:// URL
    // (WorkerConnect's Version, Session, Info and TaskTypes call-backs).
    assert!(farm.worker.url.starts_with("https://"), "the bridge registered {}", farm.worker.url);
    let https = format!("https://{}", farm.listen);
    assert_eq!(std::fs::read_to_string(farm.state_dir().join("api")).unwrap().trim(), https);

    // Plain HTTP on the TLS listener gets no answer (the handshake fails).
    let plain = reqwest::Client::new()
        .post(format!("http://{}/rpc/v0", farm.listen))
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "Filecoin.Version", "params": []}))
        .timeout(Duration::from_secs(15))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered on the HTTPS listener: {plain:?}");
    // A client that trusts another CA refuses the bridge's certificate.
    let other = sealfarm_runtime::trust::with_roots(reqwest::Client::builder(), Some(&pki.path().join("other-ca.pem")))
        .unwrap()
        .build()
        .unwrap();
    let refused = other.get(format!("{https}/metrics")).send().await;
    let err = refused.expect_err("a client trusting another CA connected");
    assert!(format!("{err:?}").contains("UnknownIssuer"), "refused for the wrong reason: {err:?}");

    // A worker over HTTPS: C1 output uploaded, C2 input fetched, proof verified.
    let token = farm.vhost.worker_token();
    let ca_arg = ca.display().to_string();
    let worker = FarmProcess::start_with(
        &farm.vhost,
        farm.dir.path(),
        "w1",
        "ap,pc1,pc2,c1,c2,fin,ru",
        "2KiB",
        &["--bridge", &https, "--bridge-ca", &ca_arg, "--worker-token", &token],
    );
    sealfarm_tests::wait_for_workers(&farm.vhost, &["w1"], Duration::from_secs(60)).await.unwrap();
    let report = farm
        .miner
        .seal_cc(&farm.worker, sector_ref(1, RegisteredSealProof::STACKED_DRG_2KIB_V1_1), Duration::from_secs(600))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\nbridge:\n{}\nworker:\n{}", farm.bridge.log_text(), worker.log_text()));
    assert!(report.verified, "the proof verifies");
    assert!(farm.bridge.log_text().contains("blob received"), "the C1 output went over HTTPS to the bridge");

    // The operator's commands on the bridge's host: no flag needed.
    let workers = farm.cli_json(&["workers"]);
    assert!(workers.to_string().contains("\"w1\""), "`workers` over HTTPS lists w1: {workers}");
    // Given a CA that did not sign the bridge's certificate, they refuse it.
    let out = farm.cli(&["workers", "--bridge-ca", &file("other-ca.pem")]);
    assert!(!out.status.success(), "`workers --bridge-ca other-ca.pem` trusted the bridge");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot reach the bridge"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
