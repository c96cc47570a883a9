//! The `sealfarm-bridge` command line: its arguments and subcommands (clap),
//! and their dispatch. `run` is [`serve`]; the operator commands (`workers`,
//! `jobs`, `queues`, the controls, `dead-letters`, `dashboard`) ask the
//! running bridge's status API and print its answer ([`views`]).

pub(crate) mod serve;
pub(crate) mod views;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use sealfarm_runtime::broker;

use crate::miner::worker_api;
use crate::ops::dead_letters::{DeadLetter, Handled};
use crate::ops::snapshot::{JobStatus, QueueStatus, WorkerStatus};

/// sealfarm's bridge to lotus-miner: it registers with the miner as one
/// lotus-worker and runs every sealing call the miner sends on the farm's
/// workers through RabbitMQ.
///
/// Point it at the miner the way lotus-worker is pointed at it:
///   export MINER_API_INFO=$(lotus-miner auth api-info --perm admin | cut -d= -f2)
///   sealfarm-bridge run --listen 10.0.0.9:3456 --storage /mnt/shared/sealing
#[derive(Parser, Debug)]
#[command(name = "sealfarm-bridge", version)]
pub struct Cli {
    /// Log format: `human`, or `json` (one object per line; lines about a
    /// call carry its call id and sector).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "SEALFARM_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register with the miner and serve its calls until SIGTERM/Ctrl-C.
    Run(Box<RunArgs>),
    /// Every worker: host, drained or not, CPU/RAM/VMEM/GPU use, slots per
    /// stage, the jobs it holds (PC1: layer k/n). Like `lotus-miner sealing workers`.
    Workers(ViewArgs),
    /// Every call of the miner: id, sector, worker, task, state (queued,
    /// claimed, running, returning, ret-wait, done, failed, dead), attempt,
    /// time. Like `lotus-miner sealing jobs`.
    Jobs(JobsArgs),
    /// Per stage and sector size: tasks ready, unacked, consumers, rates
    /// (rates and unacked need RabbitMQ's management plugin), dead letters.
    Queues(QueuesArgs),
    /// Stop a worker taking new tasks from the stage queues; it finishes the
    /// ones it holds (and still takes tasks bound to the sector files it
    /// keeps in worker-local storage). Lasts across its restarts.
    Drain(WorkerArgs),
    /// Let a drained worker take tasks again.
    ResumeWorker(WorkerArgs),
    /// Dispatch an open call's task again now, as its next attempt (the
    /// worker holding it drops the old one). CALL: the id or its first 8+ hex digits, as `jobs` prints it.
    Requeue(CallArgs),
    /// Fail an open call: the miner gets a CallError and its sealing state
    /// machine decides what next; the worker holding it drops it.
    Abort(CallArgs),
    /// The tasks in sealfarm.dead-letters: list them with their reasons,
    /// replay them (their calls run again), or purge them.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterCommand,
    },
    /// Print the URL of the web dashboard with the read token (or, with
    /// --admin, the admin token) to open it with.
    Dashboard {
        #[command(flatten)]
        target: Target,
        /// Link with the admin token (controls on the page).
        #[arg(long)]
        admin: bool,
    },
}

/// Which bridge to ask, and with what token.
#[derive(Args, Debug)]
struct Target {
    /// The bridge's URL. Default: the `api` file in the state directory.
    #[arg(long, env = "SEALFARM_BRIDGE_URL")]
    bridge: Option<String>,
    /// The CA certificates (PEM) to trust for an https:// --bridge. Default:
    /// on the bridge's host, exactly the certificate the running bridge wrote
    /// into its state directory (`api-cert.pem`); elsewhere the system's CAs.
    #[arg(long, env = "SEALFARM_BRIDGE_CA")]
    bridge_ca: Option<PathBuf>,
    /// Status API token. Default: `token-admin` (else `token-read`) in the state directory.
    #[arg(long, env = "SEALFARM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The bridge's state directory. Default: ~/.sealfarm/bridge.
    #[arg(long, env = "SEALFARM_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

impl Target {
    fn client(&self) -> Result<views::Client> {
        let state_dir = self.state_dir.clone().unwrap_or_else(views::default_state_dir);
        views::Client::new(self.bridge.clone(), self.token.clone(), self.bridge_ca.as_deref(), &state_dir)
    }
}

#[derive(Args, Debug)]
struct ViewArgs {
    #[command(flatten)]
    target: Target,
    /// Print the status API's JSON instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct JobsArgs {
    #[command(flatten)]
    view: ViewArgs,
    /// Every call ever, not only the open ones and those closed in the last hour.
    #[arg(long)]
    all: bool,
    /// Only the calls of this miner's sectors (its actor address, e.g.
    /// t01000). A bridge serves one miner: point --url at the bridge of the
    /// miner you want; this checks you reached the right one.
    #[arg(long, value_parser = parse_miner)]
    miner: Option<u64>,
}

/// An actor address (`t01000`, `f01000`) or its number.
fn parse_miner(text: &str) -> std::result::Result<u64, String> {
    crate::miner::client::actor_number(text)
        .or_else(|| text.parse().ok())
        .ok_or_else(|| format!("{text:?} is not a miner's actor address (t01000) or its number (1000)"))
}

#[derive(Args, Debug)]
struct QueuesArgs {
    #[command(flatten)]
    view: ViewArgs,
    /// Also the stage queues with no message and no consumer.
    #[arg(long)]
    all: bool,
}

#[derive(Args, Debug)]
struct WorkerArgs {
    /// The worker id, as `workers` prints it.
    worker: String,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Args, Debug)]
struct CallArgs {
    /// The call id, or its first 8 (at least 4) hex digits.
    call: String,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// What waits in sealfarm.dead-letters, and why: a page at a time,
    /// oldest first.
    List(DeadLetterPage),
    /// Dispatch dead-lettered tasks again (their calls are opened again; the
    /// result is returned to the miner, and a call the miner re-issues with
    /// the same inputs gets it).
    Replay(DeadLetterSelection),
    /// Delete dead letters for good.
    Purge(DeadLetterSelection),
}

#[derive(Args, Debug)]
struct DeadLetterPage {
    /// Skip this many dead letters (the oldest first).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Show at most this many (1 to 1000).
    #[arg(long, default_value_t = crate::ops::dead_letters::PAGE)]
    limit: usize,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Args, Debug)]
struct DeadLetterSelection {
    /// Dead-letter ids (`<call-id>/<attempt>` or `msg-…`, as `list` prints them) or prefixes of them.
    #[arg(required_unless_present = "all")]
    ids: Vec<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
    #[command(flatten)]
    view: ViewArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The miner's API: TOKEN:MULTIADDR, from `lotus-miner auth api-info --perm admin`.
    #[arg(long, env = "MINER_API_INFO", hide_env_values = true)]
    miner_api_info: String,
    /// Address the worker API listens on; the miner calls back here.
    #[arg(long, env = "SEALFARM_LISTEN", default_value = "0.0.0.0:3456")]
    listen: SocketAddr,
    /// This bridge's name on the farm: its own results, events and
    /// dead-letter queues are `sealfarm.bridge.<ID>.*`, and workers name it
    /// in `--bridge ID=URL`. Several miners share one farm with a bridge
    /// each, each with its own id. Default: the miner's actor address (e.g.
    /// t01000), asked once and kept in the state directory's `bridge-id`; a
    /// state directory keeps its id for good (its calls' results go there).
    #[arg(long, env = "SEALFARM_BRIDGE_ID")]
    bridge_id: Option<String>,
    /// This miner's share of a farm that several miners use: at most N of
    /// its tasks wait unclaimed in each stage queue, the others wait in the
    /// bridge (recorded, in arrival order) and go out as workers claim. Another
    /// miner's task then waits behind at most N of this one's, whatever its
    /// burst; N is the weight (8 against 2: about four claims to one while
    /// both have a backlog). Default: no bound (a farm of one miner). See the
    /// README, "Planning a farm".
    #[arg(long, env = "SEALFARM_FAIR_SHARE")]
    fair_share: Option<u32>,
    /// Serve HTTPS on --listen with this certificate chain (PEM, the
    /// bridge's certificate first). Tokens travel on this listener: use it
    /// when the miner, workers or operators reach the bridge across a network
    /// you do not trust. The certificate must name the address they use (an
    /// IP address needs an IP subject alt name); the miner must trust its CA,
    /// workers are given it with --bridge-ca. Default: plain HTTP, as
    /// lotus-miner talks to its workers on a LAN.
    #[arg(long, env = "SEALFARM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SEALFARM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long any one call to the miner may take (a Return, a token
    /// check, registration): a miner that accepts the connection and then
    /// says nothing fails the call after this, and the call is retried (a
    /// Return) or the request refused with 503 (a token check). A Return
    /// that streams a large output gets a second more per MiB of it.
    #[arg(long, env = "SEALFARM_MINER_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    miner_timeout: std::time::Duration,
    /// Serve `/metrics` only to requests with the read (or admin) token, as
    /// the status API: Prometheus' `authorization: { credentials_file: … }`
    /// pointed at the bridge's `token-read`. Default: open, as most
    /// exporters are (it names no call ids and no tokens).
    #[arg(long, env = "SEALFARM_METRICS_TOKEN")]
    metrics_token: bool,
    /// Serve `/metrics` on this address (plain HTTP) instead of --listen,
    /// e.g. 127.0.0.1:9464 or an address on the monitoring network.
    #[arg(long, env = "SEALFARM_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    broker: broker::BrokerArgs,
    /// Where the bridge keeps its call store. Default: ~/.sealfarm/bridge.
    #[arg(long, env = "SEALFARM_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Sealing storage that every worker also mounts (shared-storage mode). Repeatable.
    #[arg(long, required = true)]
    storage: Vec<PathBuf>,
    /// How many calls of a stage the miner may have running at once on the
    /// farm, e.g. `pc1=64` (repeatable or comma-separated; default unlimited).
    #[arg(long, env = "SEALFARM_MAX_CONCURRENT", value_delimiter = ',', value_parser = worker_api::parse_limit)]
    max_concurrent: Vec<(sealfarm_schemas::TaskType, u32)>,
    /// How long a worker may hold a call without a sign of life (claim,
    /// heartbeat, progress) before the bridge dispatches it to another worker.
    /// Keep it well above the time a worker needs to restart: a worker that is
    /// back in time resumes its jobs (a PC1 from its last finished layer).
    #[arg(long, env = "SEALFARM_LEASE_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    lease_timeout: std::time::Duration,
    /// How many attempts a call gets when its workers go silent, die or give
    /// it back; after the last the call fails with a CallError that says
    /// why, rather than being dispatched again after every lease timeout
    /// forever. The operator's `requeue` is not counted against it.
    #[arg(long, env = "SEALFARM_MAX_ATTEMPTS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    max_attempts: u32,
    /// How long after a PC1 call arrives its ticket can still land on chain.
    /// lotus draws the ticket 900 epochs (7.5 h) before it calls PC1 and
    /// rejects a precommit whose ticket is older than 3780 epochs (31.5 h):
    /// 24 h are left. A PC1 still pending or resuming after that is failed
    /// (CallError) rather than run, so the miner draws a new ticket.
    #[arg(long, env = "SEALFARM_PC1_TICKET_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pc1_ticket_window: std::time::Duration,
    /// The secret the workers' file servers expect (worker-local storage:
    /// `/remote` fetches a sector's files from the worker that holds them).
    /// The same value as the workers' SEALFARM_FILES_TOKEN.
    #[arg(long, env = "SEALFARM_FILES_TOKEN", hide_env_values = true)]
    files_token: Option<String>,
    /// RabbitMQ's management API (e.g. http://broker:15672), read with the
    /// AMQP URL's account, for unacked counts and rates in `queues` and the
    /// dashboard (sampled by RabbitMQ every 5 s). Without it the figures come
    /// from the broker protocol: ready messages and consumers, exact.
    #[arg(long, env = "SEALFARM_RABBITMQ_MANAGEMENT")]
    rabbitmq_management: Option<String>,
    /// The largest request body the worker API takes, and the largest blob
    /// (a C1 output) a worker may upload: `100MiB` as lotus' own servers.
    /// A 32 GiB sector's SealCommit2 is tens of MiB; 64 GiB ones are larger.
    /// Units: B, KiB, MiB, GiB.
    #[arg(long, env = "SEALFARM_MAX_REQUEST_SIZE", default_value = "100MiB", value_parser = parse_size)]
    max_request_size: u64,
    /// How long the call store keeps a call after it was returned to the
    /// miner (for `jobs --all` and re-issued calls); older ones are removed
    /// hourly, and the store is rewritten when removed calls leave it mostly
    /// empty, so neither its calls nor its files grow with the farm's history.
    #[arg(long, env = "SEALFARM_RETAIN_RETURNED", default_value = "3d", value_parser = humantime::parse_duration)]
    retain_returned: std::time::Duration,
    /// The secret workers present to fetch C2 inputs and upload C1 outputs
    /// (`sealfarm-worker run --bridge … --worker-token …`). Default: the
    /// `token-worker` file in the state directory, made at the first start.
    #[arg(long, env = "SEALFARM_WORKER_TOKEN", hide_env_values = true)]
    worker_token: Option<String>,
    /// The broker user each worker logs in as, `{id}` standing for its
    /// worker id: the bridge takes a worker's heartbeats, claims, progress,
    /// results and dead letters only when RabbitMQ says that user published
    /// them (or this bridge's own user, for a farm on one shared account).
    #[arg(long, env = "SEALFARM_WORKER_USER_RULE", default_value = "worker-{id}")]
    worker_user_rule: String,
    /// A worker whose broker user does not follow the rule: `ID=USER`
    /// (repeatable or comma-separated).
    #[arg(long = "worker-user", env = "SEALFARM_WORKER_USERS", value_delimiter = ',', value_parser = crate::senders::parse_binding)]
    worker_users: Vec<(String, String)>,
    /// The networks a worker's file server (its heartbeat's files_url) may be
    /// in: the bridge sends the files token there. CIDR blocks or addresses,
    /// comma-separated. Default: loopback, private and link-local ranges.
    #[arg(
        long,
        env = "SEALFARM_WORKER_NETWORKS",
        value_delimiter = ',',
        default_value = crate::senders::DEFAULT_WORKER_NETWORKS,
        value_parser = crate::senders::parse_network
    )]
    worker_networks: Vec<ipnet::IpNet>,
}

/// Parses a byte count: `104857600`, `512KiB`, `100MiB`, `1GiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?}: expected a number of bytes, e.g. 100MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("{text:?}: unknown unit {other:?} (B, KiB, MiB or GiB)")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

/// Runs the parsed command to its end.
pub async fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => serve::run(*args).await,
        other => operate(other).await,
    }
}

/// glibc gives each thread that allocates its own arena (up to 8 per core),
/// and each keeps the memory freed into it. The bridge's threads mostly wait
/// on I/O: two arenas hold its heap in about 9 MiB less RSS under load
/// (`sealfarm-bench`'s scale part). `MALLOC_ARENA_MAX` in the environment
/// still wins.
///
/// glibc also raises its mmap threshold each time a large block is freed,
/// after which MiB-sized buffers (request bodies, file chunks, blob pieces)
/// come from the arenas and leave holes there: with 40 MiB C1 outputs
/// streaming through, the bridge's resting RSS crept upwards. A fixed
/// threshold of 256 KiB keeps them mapped apart and unmapped when freed.
/// `MALLOC_MMAP_THRESHOLD_` in the environment still wins.
pub fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets an allocator parameter; no allocation races it this early.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 10);
            }
        }
    }
}

/// The operator commands: ask the running bridge, print its answer.
async fn operate(command: Command) -> Result<()> {
    use serde_json::json;
    let print_json = |value: &dyn erased::Json| println!("{}", value.pretty());
    match command {
        Command::Run(_) => unreachable!("run is not an operator command"),
        Command::Workers(view) => {
            let (workers, now): (Vec<WorkerStatus>, u64) =
                view.target.client()?.get_stamped("/sealfarm/v0/workers").await?;
            if view.json {
                print_json(&workers);
            } else {
                print!("{}", views::format_workers(&workers, now));
            }
        }
        Command::Jobs(args) => {
            let path = if args.all { "/sealfarm/v0/jobs?all=true" } else { "/sealfarm/v0/jobs" };
            let (mut jobs, now): (Vec<JobStatus>, u64) = args.view.target.client()?.get_stamped(path).await?;
            if let Some(miner) = args.miner {
                jobs.retain(|j| j.sector.miner == miner);
            }
            if args.view.json {
                print_json(&jobs);
            } else {
                print!("{}", views::format_jobs(&jobs, now));
            }
        }
        Command::Queues(args) => {
            #[derive(serde::Deserialize, serde::Serialize)]
            struct Queues {
                queues: Vec<QueueStatus>,
                dead_letters: u64,
            }
            let queues: Queues = args.view.target.client()?.get("/sealfarm/v0/queues").await?;
            if args.view.json {
                print_json(&queues);
            } else {
                print!("{}", views::format_queues(&queues.queues, queues.dead_letters, args.all));
            }
        }
        Command::Drain(args) => control(&args.view, &format!("/sealfarm/v0/workers/{}/drain", args.worker)).await?,
        Command::ResumeWorker(args) => {
            control(&args.view, &format!("/sealfarm/v0/workers/{}/resume", args.worker)).await?
        }
        Command::Requeue(args) => control(&args.view, &format!("/sealfarm/v0/jobs/{}/requeue", args.call)).await?,
        Command::Abort(args) => control(&args.view, &format!("/sealfarm/v0/jobs/{}/abort", args.call)).await?,
        Command::DeadLetters { action: DeadLetterCommand::List(page) } => {
            let DeadLetterPage { offset, limit, view } = page;
            let path = format!("/sealfarm/v0/dead-letters?offset={offset}&limit={limit}");
            let letters: Vec<DeadLetter> = view.target.client()?.get(&path).await?;
            if view.json {
                print_json(&letters);
            } else {
                print!("{}", views::format_dead_letters(&letters));
                if letters.len() == limit {
                    println!("(more may follow: sealfarm-bridge dead-letters list --offset {})", offset + limit);
                }
            }
        }
        Command::DeadLetters { action } => {
            let (verb, sel) = match action {
                DeadLetterCommand::Replay(sel) => ("replay", sel),
                DeadLetterCommand::Purge(sel) => ("purge", sel),
                DeadLetterCommand::List(_) => unreachable!("handled above"),
            };
            let body = json!({ "ids": sel.ids, "all": sel.all });
            let handled: Vec<Handled> =
                sel.view.target.client()?.post(&format!("/sealfarm/v0/dead-letters/{verb}"), body).await?;
            if sel.view.json {
                print_json(&handled);
            } else {
                print!("{}", views::format_handled(&handled));
            }
            if handled.iter().any(|h| !h.ok) {
                anyhow::bail!("some dead letters could not be {verb}ed");
            }
        }
        Command::Dashboard { target, admin } => {
            let client = target.client()?;
            let state_dir = target.state_dir.clone().unwrap_or_else(views::default_state_dir);
            let name = if admin { "token-admin" } else { "token-read" };
            let token = match &target.token {
                Some(token) => token.clone(),
                None => std::fs::read_to_string(state_dir.join(name))
                    .with_context(|| format!("cannot read {}", state_dir.join(name).display()))?
                    .trim()
                    .to_string(),
            };
            println!("{}/dashboard#token={token}", client.url);
        }
    }
    Ok(())
}

/// Sends a control and prints what the bridge says it did.
async fn control(view: &ViewArgs, path: &str) -> Result<()> {
    let answer: serde_json::Value = view.target.client()?.post(path, serde_json::json!({})).await?;
    if view.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{}", answer.get("message").and_then(|m| m.as_str()).unwrap_or("done"));
    }
    Ok(())
}

mod erased {
    /// Anything printable as pretty JSON.
    pub trait Json {
        fn pretty(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> String {
            serde_json::to_string_pretty(self).unwrap_or_default()
        }
    }
}
