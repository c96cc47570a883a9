//! BENCHMARK: the farm's own throughput on one RabbitMQ node and on the
//! three-node cluster of `scripts/rabbitmq-cluster` (every queue a quorum
//! queue with a member on each node, so each message is written by three
//! nodes). devminer → bridge → RabbitMQ → one worker with the simulated
//! compute backend (`--simulate-compute`: zero-length AddPiece jobs, so the
//! figure is the farm's, not the proofs') → bridge → devminer.
//!
//!   sealfarm-cluster-bench [--round-trips N] [--window W] [--runs R]
//!
//! Prints a Markdown table for docs/BENCHMARKS.md ("Broker cluster").

use std::time::Duration;

use anyhow::{bail, Result};
use sealfarm_tests::devminer::DevMiner;
use sealfarm_tests::{free_local_address, wait_for_workers, FarmProcess, TestVhost};

struct Options {
    round_trips: usize,
    window: usize,
    runs: usize,
}

fn options() -> Result<Options> {
    let mut options = Options { round_trips: 2000, window: 32, runs: 3 };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> { Ok(args.next().unwrap_or_default().parse()?) };
        match arg.as_str() {
            "--round-trips" => options.round_trips = value()?,
            "--window" => options.window = value()?,
            "--runs" => options.runs = value()?,
            "--help" | "-h" => {
                println!(
                    "sealfarm-cluster-bench [--round-trips 2000] [--window 32] [--runs 3]\n\
                     BENCHMARK ONLY: the farm's throughput (zero-length jobs) on one RabbitMQ node and on a \
                     three-node cluster (scripts/rabbitmq-cluster up; started if needed)."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(options)
}

/// Round trips per second of each run on `vhost`.
async fn rates(vhost: &TestVhost, options: &Options) -> Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let miner = DevMiner::new(2048);
    let miner_address = miner.serve("127.0.0.1:0".parse()?).await?;
    let listen = free_local_address();
    let bridge = FarmProcess::start_bridge(vhost, dir.path(), &miner.api_info(miner_address), listen, &[]);
    let worker = miner.wait_for_worker(Duration::from_secs(60)).await?;
    let _simulated =
        FarmProcess::start_for_bridge(vhost, dir.path(), listen, "sim-box", "ap", "2KiB", &["--simulate-compute"]);
    wait_for_workers(vhost, &["sim-box"], Duration::from_secs(60)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut number = 1;
    // A warm-up run, not counted: the first messages of a channel pay for its set-up.
    sealfarm_tests::farm_round_trips(&miner, &worker, &mut number, options.window * 4, options.window).await?;
    let mut rates = Vec::new();
    for _ in 0..options.runs {
        let rate =
            sealfarm_tests::farm_round_trips(&miner, &worker, &mut number, options.round_trips, options.window).await;
        rates.push(rate.map_err(|e| anyhow::anyhow!("{e:#}\nbridge:\n{}", bridge.log_text()))?);
    }
    Ok(rates)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let options = options()?;
    eprintln!("cluster-bench: one node");
    let one = rates(&TestVhost::new("cluster-bench-one"), &options).await?;
    eprintln!("cluster-bench: three nodes");
    let three = rates(&TestVhost::on_cluster("cluster-bench-three"), &options).await?;
    let median = |values: &[f64]| {
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let list = |values: &[f64]| values.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "| broker | round trips/s ({} runs of {}, {} in flight) | median |\n|---|---|---:|\n\
         | one node | {} | {:.0} |\n| three-node cluster | {} | {:.0} |\n| **three ÷ one** | | **{:.2}** |",
        options.runs,
        options.round_trips,
        options.window,
        list(&one),
        median(&one),
        list(&three),
        median(&three),
        median(&three) / median(&one)
    );
    Ok(())
}
