//! The two origins aikore serves (docs/security.md): the dashboard's (the
//! dashboard and API, AIKORE_PORT) and the apps' (every instance, AIKORE_APPS_PORT).
//! App pages are hostile; on their own origin the browser keeps them from
//! reading the dashboard or acting as the admin.
//!
//! Both are derived from the request's Host (its host name, the configured
//! port) and X-Forwarded-Proto, unless AIKORE_APPS_URL / AIKORE_PUBLIC_URL
//! name them (a TLS proxy, another host name).

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};

#[derive(Debug, Clone)]
pub struct Origins {
    pub dashboard_port: u16,
    pub apps_port: u16,
    /// AIKORE_APPS_URL, without a trailing slash.
    pub apps_url: Option<String>,
    /// AIKORE_PUBLIC_URL (the dashboard's), without a trailing slash.
    pub dashboard_url: Option<String>,
}

impl Default for Origins {
    fn default() -> Self {
        Origins::from_env(crate::config::DEFAULT_PORT, crate::config::DEFAULT_APPS_PORT)
    }
}

fn origin_of(url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return None;
    }
    Some(format!("{scheme}://{rest}"))
}

impl Origins {
    pub fn from_env(dashboard_port: u16, apps_port: u16) -> Origins {
        let read = |key: &str| {
            let value = std::env::var(key).ok().filter(|v| !v.trim().is_empty())?;
            let origin = origin_of(&value);
            if origin.is_none() {
                tracing::error!(%key, %value, "not an origin like https://apps.example.com[:port]; ignored");
            }
            origin
        };
        Origins {
            dashboard_port,
            apps_port,
            apps_url: read("AIKORE_APPS_URL"),
            dashboard_url: read("AIKORE_PUBLIC_URL"),
        }
    }

    /// Where apps are served, as the client that sent `headers` reaches them.
    pub fn apps(&self, headers: &HeaderMap) -> String {
        match &self.apps_url {
            Some(url) => url.clone(),
            None => format!("{}://{}:{}", scheme(headers), hostname(headers), self.apps_port),
        }
    }

    /// Where the dashboard is, seen from a request to either origin.
    pub fn dashboard(&self, headers: &HeaderMap) -> String {
        match &self.dashboard_url {
            Some(url) => url.clone(),
            None => format!("{}://{}:{}", scheme(headers), hostname(headers), self.dashboard_port),
        }
    }

    /// Whether an Origin (or Referer's origin) is the dashboard this request
    /// was sent to: its own Host, or AIKORE_PUBLIC_URL.
    pub fn is_dashboard(&self, headers: &HeaderMap, origin: &str) -> bool {
        let Some(origin) = origin_of(origin) else { return false };
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
        (!host.is_empty() && authority.eq_ignore_ascii_case(host))
            || self.dashboard_url.as_deref().is_some_and(|d| d.eq_ignore_ascii_case(&origin))
    }
}

/// `https` when NGINX (or a proxy in front of it) says the client used it.
pub fn scheme(headers: &HeaderMap) -> &'static str {
    let proto = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("");
    if proto.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("https")) {
        "https"
    } else {
        "http"
    }
}

/// The host name the client used, without its port; only characters a host
/// name or IP literal has (it goes into URLs and a Location header).
pub fn hostname(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let name = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
    };
    let plain = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    if plain {
        name.to_ascii_lowercase()
    } else {
        "localhost".into()
    }
}

/// The client's address: the peer, or, when the peer is loopback (NGINX on
/// this box), the last hop of X-Forwarded-For (NGINX appends the address it
/// saw; anything before it is the client's own claim).
pub fn client_ip(peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = peer?.ip();
    if !peer.is_loopback() {
        return Some(peer);
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|s| !s.is_empty());
    match forwarded {
        Some(text) => text.parse().ok(),
        None => Some(peer),
    }
}

/// A `next` target for after a login: a path on the same origin, nothing a
/// browser could read as another host (`//evil`, `/\evil`) or a header break.
pub fn safe_next(next: &str) -> Option<&str> {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.starts_with("/\\")
        && next.len() <= 2048
        && !next.chars().any(|c| c.is_control() || c == '\\' || c == ' ');
    ok.then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    fn origins() -> Origins {
        Origins { dashboard_port: 9000, apps_port: 9100, apps_url: None, dashboard_url: None }
    }

    #[test]
    fn apps_origin_follows_the_host_and_scheme() {
        let o = origins();
        assert_eq!(o.apps(&headers(&[("host", "gpu.lan:9000")])), "http://gpu.lan:9100");
        assert_eq!(o.apps(&headers(&[("host", "gpu.lan"), ("x-forwarded-proto", "https")])), "https://gpu.lan:9100");
        assert_eq!(o.apps(&headers(&[("host", "[::1]:9000")])), "http://[::1]:9100");
        assert_eq!(o.apps(&headers(&[("host", "evil\"<x>:1")])), "http://localhost:9100");
        let fixed = Origins { apps_url: origin_of("https://apps.example.com/"), ..origins() };
        assert_eq!(fixed.apps(&headers(&[("host", "gpu.lan:9000")])), "https://apps.example.com");
        assert_eq!(o.dashboard(&headers(&[("host", "gpu.lan:9100")])), "http://gpu.lan:9000");
    }

    #[test]
    fn only_the_dashboards_own_origin_is_the_dashboard() {
        let o = origins();
        let h = headers(&[("host", "gpu.lan:9000")]);
        assert!(o.is_dashboard(&h, "http://gpu.lan:9000"));
        assert!(!o.is_dashboard(&h, "http://gpu.lan:9100"), "the apps port is another origin");
        assert!(!o.is_dashboard(&h, "null"));
        assert!(!o.is_dashboard(&h, "http://evil.example"));
    }

    #[test]
    fn the_client_is_the_last_forwarded_hop_only_behind_loopback() {
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "10.0.0.7:5000".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4, 192.168.1.9")]);
        assert_eq!(client_ip(Some(local), &h), Some("192.168.1.9".parse().unwrap()));
        assert_eq!(client_ip(Some(remote), &h), Some("10.0.0.7".parse().unwrap()), "a remote peer cannot claim one");
        assert_eq!(client_ip(Some(local), &HeaderMap::new()), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(client_ip(None, &h), None);
    }

    #[test]
    fn next_targets_stay_on_the_origin() {
        assert_eq!(safe_next("/app/a/?x=1"), Some("/app/a/?x=1"));
        for bad in ["//evil.example/", "/\\evil.example", "https://evil.example/", "/a\r\nSet-Cookie: x", ""] {
            assert_eq!(safe_next(bad), None, "{bad:?}");
        }
    }
}
