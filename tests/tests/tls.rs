//! `amqps://` against a real TLS listener: a RabbitMQ node of its own
//! (`sftls@localhost`, plain AMQP on 5690, TLS on 5691, started by
//! `scripts/rabbitmq-cluster node`) with a CA, server and client
//! certificates this test makes with openssl. The listener asks every client
//! for a certificate, and takes RabbitMQ's x509 login (EXTERNAL) too.
//!
//! What a storage provider relies on: an amqps:// URL connects with TLS or
//! not at all (never in plain text), only to a broker whose certificate
//! chains to the CA given and names the host of the URL, and a worker can log
//! in with its certificate instead of a password.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sealfarm_runtime::broker::{BrokerArgs, BrokerLink, Role};
use sealfarm_tests::TestVhost;

const NODE: &str = "sftls@localhost";
const PLAIN_PORT: u16 = 5690;
const TLS_PORT: u16 = 5691;
/// The common name of the client certificate, and the broker user it logs in as.
const CERT_USER: &str = "sealfarm-worker-tls";

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(out.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts the TLS node afresh: new certificates, and no data (users) of an
/// earlier run.
fn start_tls_node() -> PathBuf {
    let base = PathBuf::from(std::env::var("CLUSTER_DIR").unwrap_or_else(|_| "/var/tmp/sealfarm-rabbitmq".into()));
    let _ = Command::new("rabbitmqctl").args(["-q", "-n", NODE, "stop"]).output();
    let _ = std::fs::remove_dir_all(base.join("sftls"));
    let pki = base.join("sftls-pki");
    let _ = std::fs::remove_dir_all(&pki);
    std::fs::create_dir_all(&pki).unwrap();
    sealfarm_tests::pki::make(&pki, "DNS:localhost", CERT_USER);
    // The node runs as the rabbitmq user: it must read the files.
    run(Command::new("chmod").arg("-R").arg("a+rX").arg(&base));
    let conf = pki.join("tls.conf");
    let p = |f: &str| pki.join(f).display().to_string();
    std::fs::write(
        &conf,
        format!(
            "listeners.ssl.default = {TLS_PORT}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = true\n\
             auth_mechanisms.1 = PLAIN\n\
             auth_mechanisms.2 = AMQPLAIN\n\
             auth_mechanisms.3 = EXTERNAL\n\
             ssl_cert_login_from = common_name\n",
            p("ca.pem"),
            p("server.pem"),
            p("server.key")
        ),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq-cluster");
    run(Command::new(script)
        .args(["node", NODE, &PLAIN_PORT.to_string()])
        .arg(&conf)
        .env("PLUGINS", "rabbitmq_auth_mechanism_ssl"));
    pki
}

/// Stops the TLS node when the test ends.
struct StopNode;

impl Drop for StopNode {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["-q", "-n", NODE, "stop"]).output();
    }
}

fn broker_args(url: &str, ca: Option<PathBuf>, identity: Option<(PathBuf, PathBuf)>) -> BrokerArgs {
    let mut args = BrokerArgs::url(url);
    args.ca = ca;
    if let Some((cert, key)) = identity {
        args.cert = Some(cert);
        args.key = Some(key);
    }
    args
}

/// Connects as a sealfarm process would; the error text when it cannot.
async fn connect(args: BrokerArgs) -> Result<(), String> {
    let config = args.config().map_err(|e| format!("{e:#}"))?;
    let link = BrokerLink::new(config, "sealfarm tls test".into(), Role::Bridge(None));
    let outcome = link.get().await.map(|_| ()).map_err(|e| format!("{e:#}"));
    link.close().await;
    outcome
}

/// `(user, ssl, auth_mechanism)` of every connection to the vhost.
fn connections(vhost: &TestVhost) -> Vec<(String, String, String)> {
    vhost
        .rabbitmqctl(&[
            "list_connections",
            "-p",
            &vhost.name,
            "user",
            "ssl",
            "auth_mechanism",
            "--no-table-headers",
            "-q",
        ])
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((f.next()?.to_string(), f.next()?.to_string(), f.next()?.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn amqps_connects_with_tls_only_to_the_right_broker_and_logs_in_with_a_certificate() {
    let pki = start_tls_node();
    let _stop = StopNode;
    let vhost = TestVhost::on_node("tls", NODE, vec![format!("127.0.0.1:{PLAIN_PORT}")]);
    vhost.rabbitmqctl(&["add_user", CERT_USER, "unused-password"]);
    vhost.rabbitmqctl(&["clear_password", CERT_USER]);
    vhost.rabbitmqctl(&["set_permissions", "-p", &vhost.name, CERT_USER, ".*", ".*", ".*"]);
    let file = |name: &str| pki.join(name);
    let client = || Some((file("client.pem"), file("client.key")));
    let tls_url = |host: &str, port: u16| format!("amqps://guest:guest@{host}:{port}/{}", vhost.name);

    // The CA, the client certificate, the name the certificate gives: connected, over TLS.
    connect(broker_args(&tls_url("localhost", TLS_PORT), Some(file("ca.pem")), client()))
        .await
        .expect("amqps:// with the CA and a client certificate connects");

    // An amqps:// URL that points at the plain listener fails; it never talks AMQP in plain text.
    let plain = connect(broker_args(&tls_url("localhost", PLAIN_PORT), Some(file("ca.pem")), client())).await;
    assert!(plain.is_err(), "amqps:// to a plain listener must fail");
    // A broker whose certificate chains to another CA is not trusted.
    let other = connect(broker_args(&tls_url("localhost", TLS_PORT), Some(file("other-ca.pem")), client())).await;
    let other = other.expect_err("a certificate from an untrusted CA must be refused");
    assert!(other.contains("certificate"), "the error names the certificate: {other}");
    // The certificate names `localhost`, not 127.0.0.1: the name is checked.
    let name = connect(broker_args(&tls_url("127.0.0.1", TLS_PORT), Some(file("ca.pem")), client())).await;
    let name = name.expect_err("a certificate for another name must be refused");
    assert!(name.contains("certificate"), "the error names the certificate: {name}");
    // This listener wants a client certificate: without one, no connection.
    let anonymous = connect(broker_args(&tls_url("localhost", TLS_PORT), Some(file("ca.pem")), None)).await;
    assert!(anonymous.is_err(), "the listener requires a client certificate");
    let seen = connections(&vhost);
    assert!(seen.is_empty(), "no refused attempt reached the vhost: {seen:?}");

    // Mistakes in the settings are named before any connection.
    let missing = connect(broker_args(&tls_url("localhost", TLS_PORT), Some(file("no-such-ca.pem")), None)).await;
    assert!(missing.unwrap_err().contains("no-such-ca.pem"));
    let not_a_cert = connect(broker_args(&tls_url("localhost", TLS_PORT), Some(file("ca.key")), None)).await;
    assert!(not_a_cert.unwrap_err().contains("holds no PEM CERTIFICATE"));
    let tls_files_for_plain = connect(broker_args(&vhost.url(), Some(file("ca.pem")), None)).await;
    assert!(tls_files_for_plain.unwrap_err().contains("amqps://"));

    // A real worker logs in with its certificate (RabbitMQ's x509 login: no
    // password in its URL) and announces itself.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("amqps://{CERT_USER}@localhost:{TLS_PORT}/{}?auth_mechanism=external", vhost.name);
    let ca = file("ca.pem").display().to_string();
    let (cert, key) = (file("client.pem").display().to_string(), file("client.key").display().to_string());
    let worker = sealfarm_tests::FarmProcess::start_with(
        &vhost,
        dir.path(),
        "w-tls",
        "ap",
        "2KiB",
        &["--amqp", &url, "--amqp-ca", &ca, "--amqp-cert", &cert, "--amqp-key", &key],
    );
    sealfarm_tests::wait_for_workers(&vhost, &["w-tls"], Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", worker.log_text()));
    let seen = connections(&vhost);
    assert!(
        seen.iter().any(|(user, ssl, mechanism)| user == CERT_USER && ssl == "true" && mechanism == "EXTERNAL"),
        "the worker's connection is TLS, logged in by its certificate: {seen:?}"
    );
}
