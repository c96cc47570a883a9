//! `MINER_API_INFO` as lotus parses it (`cli/util/apiinfo.go`):
//! `TOKEN:MULTIADDR` (or a bare multiaddr / URL), giving the miner's RPC URL
//! `http://A:P/rpc/v0` and the bearer token.

use anyhow::{bail, Context, Result};

/// Where the miner's API is and the token to use.
#[derive(Clone, PartialEq, Eq)]
pub struct MinerApiInfo {
    pub token: Option<String>,
    /// `host:port` of the miner API.
    pub address: String,
    pub url: String,
}

impl std::fmt::Debug for MinerApiInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never print it.
        f.debug_struct("MinerApiInfo")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl MinerApiInfo {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim().split(',').next().unwrap_or("").trim();
        if text.is_empty() {
            bail!("MINER_API_INFO is empty: set it to the output of `lotus-miner auth api-info --perm admin`");
        }
        let (token, address) = if text.starts_with('/') {
            (None, text)
        } else {
            match text.find(':') {
                Some(i) if !text[i + 1..].starts_with("//") => (Some(text[..i].to_string()), &text[i + 1..]),
                _ => (None, text),
            }
        };
        let (host_port, tls) = if address.starts_with('/') {
            parse_multiaddr(address)?
        } else {
            let (rest, tls) = address
                .strip_prefix("http://")
                .or_else(|| address.strip_prefix("ws://"))
                .map(|r| (r, false))
                .or_else(|| {
                    address.strip_prefix("https://").or_else(|| address.strip_prefix("wss://")).map(|r| (r, true))
                })
                .with_context(|| format!("MINER_API_INFO address {address:?} is neither a multiaddr nor a URL"))?;
            (rest.trim_end_matches('/').trim_end_matches("/rpc/v0").to_string(), tls)
        };
        let scheme = if tls { "https" } else { "http" };
        Ok(MinerApiInfo { token, url: format!("{scheme}://{host_port}/rpc/v0"), address: host_port })
    }
}

fn parse_multiaddr(address: &str) -> Result<(String, bool)> {
    let parts: Vec<&str> = address.split('/').filter(|p| !p.is_empty()).collect();
    let mut host = None;
    let mut port = None;
    let mut tls = false;
    let mut i = 0;
    while i < parts.len() {
        match parts[i] {
            "ip4" | "dns" | "dns4" | "dns6" => {
                host = parts.get(i + 1).map(|h| h.to_string());
                i += 1;
            }
            "ip6" => {
                host = parts.get(i + 1).map(|h| format!("[{h}]"));
                i += 1;
            }
            "tcp" => {
                port = parts.get(i + 1).map(|p| p.to_string());
                i += 1;
            }
            "tls" | "wss" | "https" => tls = true,
            _ => {}
        }
        i += 1;
    }
    match (host, port) {
        (Some(host), Some(port)) => Ok((format!("{host}:{port}"), tls)),
        _ => bail!("MINER_API_INFO multiaddr {address:?} has no host and TCP port (e.g. /ip4/127.0.0.1/tcp/2345/http)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_token_and_multiaddr_like_lotus() {
        let info = MinerApiInfo::parse("eyJhbGci.eyJBbGxvdyI.sig:/ip4/10.0.0.5/tcp/2345/http").unwrap();
        assert_eq!(info.token.as_deref(), Some("eyJhbGci.eyJBbGxvdyI.sig"));
        assert_eq!(info.url, "http://10.0.0.5:2345/rpc/v0");
        let bare = MinerApiInfo::parse("/ip4/127.0.0.1/tcp/2345/http").unwrap();
        assert_eq!(bare.token, None);
        let url = MinerApiInfo::parse("tok:http://miner:2345").unwrap();
        assert_eq!((url.token.as_deref(), url.url.as_str()), (Some("tok"), "http://miner:2345/rpc/v0"));
        let v6 = MinerApiInfo::parse("t:/ip6/::1/tcp/2345/http").unwrap();
        assert_eq!(v6.url, "http://[::1]:2345/rpc/v0");
        assert!(MinerApiInfo::parse("tok:/ip4/1.2.3.4").unwrap_err().to_string().contains("TCP port"));
        assert!(!format!("{info:?}").contains("eyJ"), "the token never appears in debug output");
    }
}
