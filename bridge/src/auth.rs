//! Tokens: finding the one a request carries and comparing it with ours in
//! constant time (`subtle`), for every route that takes one.

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

/// Whether `presented` is `ours`, in time that does not depend on where
/// they first differ (their length may show).
pub(crate) fn same(presented: &str, ours: &str) -> bool {
    presented.as_bytes().ct_eq(ours.as_bytes()).into()
}

/// Whether the request carries one of `tokens` (`Authorization: Bearer …`,
/// or `?token=…` where `query` is given).
pub(crate) fn carries(headers: &HeaderMap, query: Option<&str>, tokens: &[&str]) -> bool {
    crate::miner::rpc::bearer_token(headers, query).is_some_and(|t| tokens.iter().any(|ours| same(&t, ours)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        assert!(same("0123456789abcdef", "0123456789abcdef"));
        assert!(!same("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same("0123456789abcde", "0123456789abcdef"));
        assert!(!same("", "0123456789abcdef"));
        let mut headers = HeaderMap::new();
        headers.insert(axum::http::header::AUTHORIZATION, "Bearer worker-token-0001".parse().unwrap());
        assert!(carries(&headers, None, &["admin-token-00001", "worker-token-0001"]));
        assert!(!carries(&headers, None, &["admin-token-00001"]));
        assert!(carries(&HeaderMap::new(), Some("a=1&token=admin-token-00001"), &["admin-token-00001"]));
    }
}
