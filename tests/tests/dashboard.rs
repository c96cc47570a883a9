//! The web dashboard (issue 6, item 4) in headless Chromium: after a real
//! sealing run it shows the workers, queues, jobs and each sector's timeline
//! (stage, worker, start, end, attempt); with the read token it has no
//! controls, with the admin token it has them; a wrong token is refused.
//! The admin view is saved as `docs/dashboard.png` (the README shows it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sealfarm_schemas::RegisteredSealProof;
use sealfarm_tests::devminer::sector_ref;
use sealfarm_tests::{wait_for_workers, BridgeFarm};

const PROOF: RegisteredSealProof = RegisteredSealProof::STACKED_DRG_2KIB_V1_1;

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("no Chromium: scripts/setup installs it (apt-get install chromium)");
}

/// Loads `url` headless, lets its scripts run, and returns the DOM; with
/// `screenshot`, saves the page as a PNG there instead.
fn load(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(chromium());
    command
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg("--virtual-time-budget=8000")
        .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())).arg("--window-size=1400,1450"),
        None => command.arg("--dump-dom").arg("--window-size=1400,1000"),
    };
    let out = command.arg(url).output().expect("Chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    without_scripts(&String::from_utf8_lossy(&out.stdout))
}

/// The DOM without the page's own script (its templates name every element).
fn without_scripts(dom: &str) -> String {
    let mut rest = dom;
    let mut out = String::new();
    while let Some(start) = rest.find("<script") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("</script>").map_or(rest.len(), |e| start + e + "</script>".len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_farm_and_each_sectors_timeline() {
    let farm = BridgeFarm::start("dashboard").await;
    let _sealer = farm.start_worker("sealing-box", "ap,pc1,pc2,c1,fin,ru");
    let _prover = farm.start_worker("proving-box", "c2");
    wait_for_workers(&farm.vhost, &["sealing-box", "proving-box"], Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = farm.miner.seal_cc(&farm.worker, sector_ref(1, PROOF), Duration::from_secs(600)).await.unwrap();
    assert!(report.verified);
    farm.cli_ok(&["drain", "proving-box"]);

    let base = format!("http://{}/dashboard", farm.listen);
    let read = load(&format!("{base}#token={}", farm.token("read")), None);
    assert!(read.contains("data-loaded=\"yes\""), "the page rendered the farm:\n{read}");
    for wanted in [
        "data-worker=\"sealing-box\"",
        "data-worker=\"proving-box\"",
        "sealfarm.task.pc1.2KiB",
        "data-sector=\"s-t01000-1\"",
        "read-only",
    ] {
        assert!(read.contains(wanted), "the dashboard lacks {wanted:?}:\n{read}");
    }
    let prover = &read[read.find("data-worker=\"proving-box\"").unwrap()..];
    assert!(prover[..prover.find("</tr>").unwrap()].contains("b-draining"), "the drained worker shows it: {prover}");
    // Each stage of the sector in its timeline, with the worker that ran it.
    let timeline = &read[read.find("data-sector=\"s-t01000-1\"").unwrap()..];
    for stage in ["AP", "PC1", "PC2", "C1", "C2", "FIN"] {
        assert!(timeline.contains(&format!(">{stage}<")), "no {stage} in the timeline:\n{timeline}");
    }
    assert!(timeline.contains("proving-box") && timeline.contains("sealing-box"), "{timeline}");
    for call in &report.calls {
        if call.0 != "Fetch" {
            assert!(read.contains(&format!("data-call=\"{}\"", call.1.id)), "no row for {} {}", call.0, call.1.id);
        }
    }
    assert!(!read.contains("<button"), "the read token gets no controls:\n{read}");
    // Filtered to another miner of the farm: none of this one's jobs or sectors.
    let other = load(&format!("{base}#token={}&miner=t01001", farm.token("read")), None);
    assert!(other.contains("data-loaded=\"yes\"") && other.contains("<option value=\"t01000\">"), "{other}");
    assert!(!other.contains("data-sector=\"s-t01000-1\""), "the filter hides t01000's sector:\n{other}");
    assert!(!other.contains(&format!("data-call=\"{}\"", report.calls[0].1.id)), "and its jobs:\n{other}");

    let admin = load(&format!("{base}#token={}", farm.token("admin")), None);
    assert!(admin.contains("<button class=\"control"), "the admin token gets the controls:\n{admin}");
    let refused = load(&format!("{base}#token=not-the-token"), None);
    assert!(refused.contains("token rejected") && !refused.contains("data-worker="), "{refused}");

    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png");
    let _ = std::fs::remove_file(&shot);
    load(&format!("{base}#token={}", farm.token("admin")), Some(&shot));
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real picture: {} bytes", png.len());
}
