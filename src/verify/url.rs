//! The URL the broker would call for a registration, by the upstream project's rules, and
//! where to connect for it. Pure: every rule is a table row in the tests below.
//!
//! HTTPRoute `targetRef` -> the first `backendRef` of its first rule: a Service is
//! `<svc>.<ns>.svc.cluster.local:<port>`, an Istio `Hostname` backend is `<host>:443`
//! unless it names a port; the path is `spec.path` (default `/mcp`); a `caCertSecretRef`
//! makes the scheme `https`. The annotations `trust-sds.io/verify-url` (the whole URL) and
//! `trust-sds.io/verify-connect-to` (`IP:PORT`) override this where the cluster differs or
//! routes are not known (the manifests source).

use std::fmt;
use std::net::SocketAddr;

use crate::model::{
    Backend, Registration, Route, VERIFY_CONNECT_TO_ANNOTATION, VERIFY_URL_ANNOTATION,
};

/// The broker's default MCP endpoint path.
pub const DEFAULT_PATH: &str = "/mcp";

/// Where one registration's upstream is, for a TLS handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub url: String,
    /// The URL's host: SNI and the name the certificate must have.
    pub host: String,
    pub port: u16,
    /// Where to connect instead of resolving `host` (the connect-to annotation).
    pub connect_to: Option<SocketAddr>,
}

impl UpstreamTarget {
    /// `host:port` as messages name the upstream (IPv6 hosts in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a registration has no URL to verify; the text says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoUpstreamUrl(pub String);

impl fmt::Display for NoUpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The upstream of `registration`, whose target route is `route` when the source knows it.
pub fn derive(
    registration: &Registration,
    route: Option<&Route>,
) -> Result<UpstreamTarget, NoUpstreamUrl> {
    let hints = &registration.upstream;
    let url = match &hints.verify_url {
        Some(url) => url.clone(),
        None => route_url(registration, route)?,
    };
    let (host, port) = parse_https(&url).map_err(|why| {
        NoUpstreamUrl(match &hints.verify_url {
            Some(_) => format!("annotation {VERIFY_URL_ANNOTATION} {url:?} {why}"),
            None => format!("derived URL {url:?} {why}"),
        })
    })?;
    let connect_to = hints
        .verify_connect_to
        .as_deref()
        .map(|addr| {
            addr.parse::<SocketAddr>().map_err(|_| {
                NoUpstreamUrl(format!(
                    "annotation {VERIFY_CONNECT_TO_ANNOTATION} {addr:?} is not IP:PORT"
                ))
            })
        })
        .transpose()?;
    Ok(UpstreamTarget {
        url,
        host,
        port,
        connect_to,
    })
}

fn route_url(registration: &Registration, route: Option<&Route>) -> Result<String, NoUpstreamUrl> {
    let set_annotation = format!("set the annotation {VERIFY_URL_ANNOTATION}");
    let Some(route_key) = &registration.target_route else {
        return Err(NoUpstreamUrl(format!(
            "no upstream URL: targetRef is not an HTTPRoute; {set_annotation}"
        )));
    };
    let Some(route) = route else {
        return Err(NoUpstreamUrl(format!(
            "no upstream URL: HTTPRoute {route_key} is not known; {set_annotation}"
        )));
    };
    let Some(backend) = &route.first_backend else {
        return Err(NoUpstreamUrl(format!(
            "no upstream URL: HTTPRoute {route_key} has no Service or Hostname backendRef; {set_annotation}"
        )));
    };
    let authority = match backend {
        Backend::Service {
            namespace,
            name,
            port: Some(port),
        } => format!("{name}.{namespace}.svc.cluster.local:{port}"),
        Backend::Service { name, .. } => {
            return Err(NoUpstreamUrl(format!(
                "no upstream URL: backendRef Service {name} of HTTPRoute {route_key} has no port; {set_annotation}"
            )));
        }
        Backend::Hostname { host, port } => format!("{host}:{}", port.unwrap_or(443)),
    };
    // Only a Hostname backend or a CA reference means TLS; a plain Service is called over
    // http, which has nothing to verify.
    let https =
        registration.ca_cert_secret_ref.is_some() || matches!(backend, Backend::Hostname { .. });
    let scheme = if https { "https" } else { "http" };
    let path = registration
        .upstream
        .path
        .as_deref()
        .unwrap_or(DEFAULT_PATH);
    let slash = if path.starts_with('/') { "" } else { "/" };
    Ok(format!("{scheme}://{authority}{slash}{path}"))
}

/// The host and port of an `https` URL (port 443 when absent).
fn parse_https(url: &str) -> Result<(String, u16), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .ok_or("is not an https:// URL (nothing to verify)")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not carry user information");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or("has an unclosed '['")?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("has no host");
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or("has an invalid port")?,
        None => 443,
    };
    Ok((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ObjectKey, SecretKeyRef, UpstreamHints};

    fn registration(
        ca: bool,
        path: Option<&str>,
        url: Option<&str>,
        to: Option<&str>,
    ) -> Registration {
        Registration {
            key: ObjectKey::new("team", "weather"),
            generation: Some(1),
            ca_cert_secret_ref: ca.then(|| SecretKeyRef::new("weather-ca", None)),
            target_route: Some(ObjectKey::new("team", "weather-route")),
            disabled: false,
            upstream: UpstreamHints {
                path: path.map(str::to_owned),
                verify_url: url.map(str::to_owned),
                verify_connect_to: to.map(str::to_owned),
            },
        }
    }

    fn route(backend: Option<Backend>) -> Route {
        Route {
            key: ObjectKey::new("team", "weather-route"),
            parent_gateways: Vec::new(),
            first_backend: backend,
        }
    }

    fn service(port: Option<u16>) -> Option<Backend> {
        Some(Backend::Service {
            namespace: "team".into(),
            name: "weather".into(),
            port,
        })
    }

    fn hostname(host: &str, port: Option<u16>) -> Option<Backend> {
        Some(Backend::Hostname {
            host: host.into(),
            port,
        })
    }

    /// (what, registration, route, URL or the start of the reason)
    type Case = (
        &'static str,
        Registration,
        Option<Route>,
        Result<&'static str, &'static str>,
    );

    #[test]
    fn urls_follow_the_brokers_rules_and_the_annotations() {
        let cases: Vec<Case> = vec![
            (
                "Service backend with a CA reference",
                registration(true, None, None, None),
                Some(route(service(Some(8443)))),
                Ok("https://weather.team.svc.cluster.local:8443/mcp"),
            ),
            (
                "spec.path is appended",
                registration(true, Some("/v1/mcp"), None, None),
                Some(route(service(Some(8443)))),
                Ok("https://weather.team.svc.cluster.local:8443/v1/mcp"),
            ),
            (
                "a path without its slash",
                registration(true, Some("mcp"), None, None),
                Some(route(service(Some(443)))),
                Ok("https://weather.team.svc.cluster.local:443/mcp"),
            ),
            (
                "Hostname backend defaults to 443",
                registration(true, None, None, None),
                Some(route(hostname("api.example.com", None))),
                Ok("https://api.example.com:443/mcp"),
            ),
            (
                "Hostname backend with a port",
                registration(false, None, None, None),
                Some(route(hostname("api.example.com", Some(8443)))),
                Ok("https://api.example.com:8443/mcp"),
            ),
            (
                "the URL annotation wins over the route",
                registration(true, None, Some("https://weather.example:9443/x"), None),
                Some(route(service(Some(8443)))),
                Ok("https://weather.example:9443/x"),
            ),
            (
                "the URL annotation without routes",
                registration(true, None, Some("https://weather.example"), None),
                None,
                Ok("https://weather.example"),
            ),
            (
                "a plain Service is http: nothing to verify",
                registration(false, None, None, None),
                Some(route(service(Some(8080)))),
                Err(
                    "derived URL \"http://weather.team.svc.cluster.local:8080/mcp\" is not an https:// URL",
                ),
            ),
            (
                "route unknown",
                registration(true, None, None, None),
                None,
                Err("no upstream URL: HTTPRoute team/weather-route is not known"),
            ),
            (
                "route without a usable backend",
                registration(true, None, None, None),
                Some(route(None)),
                Err("no upstream URL: HTTPRoute team/weather-route has no Service"),
            ),
            (
                "Service without a port",
                registration(true, None, None, None),
                Some(route(service(None))),
                Err(
                    "no upstream URL: backendRef Service weather of HTTPRoute team/weather-route has no port",
                ),
            ),
            (
                "an http URL annotation",
                registration(true, None, Some("http://weather.example/mcp"), None),
                None,
                Err(
                    "annotation trust-sds.io/verify-url \"http://weather.example/mcp\" is not an https:// URL",
                ),
            ),
            (
                "a bad port",
                registration(true, None, Some("https://weather.example:99999/"), None),
                None,
                Err(
                    "annotation trust-sds.io/verify-url \"https://weather.example:99999/\" has an invalid port",
                ),
            ),
            (
                "a bad connect-to",
                registration(
                    true,
                    None,
                    Some("https://weather.example/"),
                    Some("weather:1"),
                ),
                None,
                Err("annotation trust-sds.io/verify-connect-to \"weather:1\" is not IP:PORT"),
            ),
        ];
        for (what, reg, route, want) in cases {
            let got = derive(&reg, route.as_ref()).map(|t| t.url).map_err(|e| e.0);
            match (got, want) {
                (Ok(url), Ok(want)) => assert_eq!(url, want, "{what}"),
                (Err(why), Err(want)) => assert!(why.starts_with(want), "{what}: {why}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn host_port_and_connect_to() {
        let reg = registration(
            true,
            None,
            Some("https://Weather.Example:9443/mcp"),
            Some("127.0.0.1:4443"),
        );
        let t = derive(&reg, None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("weather.example", 9443));
        assert_eq!(t.authority(), "weather.example:9443");
        assert_eq!(t.connect_to, Some("127.0.0.1:4443".parse().unwrap()));
        let v6 = derive(
            &registration(true, None, Some("https://[::1]/mcp"), None),
            None,
        )
        .unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 443));
        assert_eq!(v6.authority(), "[::1]:443");
    }
}
