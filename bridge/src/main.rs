//! `sealfarm-bridge`: parse the arguments, set up logging, run the command
//! ([`sealfarm_bridge::cli`] holds the arguments and the commands).

use clap::Parser;
use sealfarm_bridge::cli::{self, Cli, LogFormat};

fn main() {
    let cli = Cli::parse();
    cli::tune_malloc();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,lapin=warn,amq_protocol=warn,sled=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(err) = runtime.block_on(cli::execute(cli)) {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
