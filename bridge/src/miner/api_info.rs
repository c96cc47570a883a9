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
            match text.split_once(':') {
                // A URL without a token: its scheme, not a token, is before the ':'.
                Some((scheme, _)) if ["http", "https", "ws", "wss"].contains(&scheme) => (None, text),
                // Anything else before the ':' is a token, even when what
                // follows is mistyped (`TOKEN://ip4/…`): it is then never
                // quoted in a refusal.
                Some((token, address)) => (Some(token.to_string()), address),
                None => (None, text),
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
        let url = format!("{scheme}://{host_port}/rpc/v0");
        check_url(&url, &host_port)?;
        Ok(MinerApiInfo { token, url, address: host_port })
    }
}

/// The miner's URL must be one a client can connect to: a host, a numeric
/// port, no query. A typo (`/tcp/23a5`, `/ip4/10.0.0.500`, `http://`) is
/// named here, not later as a failed connection to a strange URL. The
/// message names the address only: the token stays out of logs.
fn check_url(url: &str, address: &str) -> Result<()> {
    if address.is_empty() || address.starts_with('/') {
        bail!("MINER_API_INFO address {address:?} names no host");
    }
    let not_one = || format!("MINER_API_INFO address {address:?} is not a host and TCP port");
    let parsed = url::Url::parse(url).with_context(not_one)?;
    if parsed.host_str().is_none_or(str::is_empty) || parsed.query().is_some() || parsed.fragment().is_some() {
        bail!(not_one());
    }
    Ok(())
}

fn parse_multiaddr(address: &str) -> Result<(String, bool)> {
    let parts: Vec<&str> = address.split('/').filter(|p| !p.is_empty()).collect();
    let mut host = None;
    let mut port = None;
    let mut tls = false;
    let mut i = 0;
    while i < parts.len() {
        match parts[i] {
            "dns" | "dns4" | "dns6" => {
                host = parts.get(i + 1).map(|h| h.to_string());
                i += 1;
            }
            "ip4" => {
                host = parts.get(i + 1).map(|h| ip::<std::net::Ipv4Addr>(address, h)).transpose()?;
                i += 1;
            }
            "ip6" => {
                host = parts.get(i + 1).map(|h| ip::<std::net::Ipv6Addr>(address, h)).transpose()?;
                host = host.map(|h| format!("[{h}]"));
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

/// The address of an `ip4` or `ip6` part, checked to be one.
fn ip<A: std::str::FromStr + std::fmt::Display>(address: &str, text: &str) -> Result<String> {
    match text.parse::<A>() {
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => bail!("MINER_API_INFO multiaddr {address:?}: {text:?} is not an IP address of that kind"),
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
        let typo = MinerApiInfo::parse("secret:/ip4/1.2.3.4/tcp/23a5/http").unwrap_err().to_string();
        assert!(typo.contains("\"1.2.3.4:23a5\" is not a host and TCP port") && !typo.contains("secret"), "{typo}");
        let typo = MinerApiInfo::parse("secret:/ip4/10.0.0.500/tcp/2345/http").unwrap_err().to_string();
        assert!(typo.contains("\"10.0.0.500\" is not an IP address"), "{typo}");
        assert!(MinerApiInfo::parse("secret:http://").unwrap_err().to_string().contains("names no host"));
        let typo = MinerApiInfo::parse("secret://ns4/miner/tcp/2345/wss").unwrap_err().to_string();
        assert!(typo.contains("no host and TCP port") && !typo.contains("secret"), "{typo}");
        assert!(!format!("{info:?}").contains("eyJ"), "the token never appears in debug output");
    }
}
