//! Whom an HTTP client trusts for https:// URLs: the CA certificates of a
//! file the operator names (a worker's `--bridge-ca`, an operator
//! command's `--bridge-ca`), else the system's bundle. Roots are never
//! compiled into the binaries.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::broker::SYSTEM_CA_BUNDLE;

/// `builder` trusting the PEM certificates in `ca`, or in the system's
/// bundle when `ca` is `None` (a machine without one can still use http://).
pub fn with_roots(builder: reqwest::ClientBuilder, ca: Option<&Path>) -> Result<reqwest::ClientBuilder> {
    let path = ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let pem = match std::fs::read(path) {
        Ok(pem) => pem,
        Err(_) if ca.is_none() => return Ok(builder),
        Err(err) => bail!("cannot read the CA file {}: {err}", path.display()),
    };
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("{} is not a PEM certificate bundle", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM CERTIFICATE", path.display());
    }
    Ok(certs.into_iter().fold(builder, |builder, cert| builder.add_root_certificate(cert)))
}
