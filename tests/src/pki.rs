//! Test certificates made with openssl: a CA, another CA nobody trusts, and
//! a server and a client certificate the first CA signs (EC P-256, valid
//! two days). For the TLS tests of the broker link and the bridge's HTTPS.

use std::path::Path;
use std::process::Command;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes into `dir`: `ca.pem`/`ca.key`, `other-ca.pem`/`other-ca.key`,
/// `server.pem`/`server.key` (common name `localhost`, subject alt names
/// `server_names`, e.g. `DNS:localhost,IP:127.0.0.1`) and
/// `client.pem`/`client.key` (common name `client_cn`, for x509 logins).
pub fn make(dir: &Path, server_names: &str, client_cn: &str) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let subject = format!("/CN=sealfarm test {ca}");
        let (key, pem) = (format!("{ca}.key"), format!("{ca}.pem"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", &subject, "-keyout", &key, "-out", &pem];
        args.extend(ec);
        openssl(dir, &args);
    }
    let server_ext = format!("subjectAltName={server_names}\nextendedKeyUsage=serverAuth\n");
    for (name, cn, ext) in
        [("server", "localhost", server_ext.as_str()), ("client", client_cn, "extendedKeyUsage=clientAuth\n")]
    {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let subject = format!("/CN={cn}");
        let (key, csr, pem, extfile) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        let mut args = vec!["req", "-subj", &subject, "-keyout", &key, "-out", &csr];
        args.extend(ec);
        openssl(dir, &args);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-extfile",
                &extfile,
            ],
        );
    }
}
