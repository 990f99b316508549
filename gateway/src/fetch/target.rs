//! The parts of an image URL a fetch needs, checked before any lookup or connection: the scheme
//! (`https`, or `http` where allowed), no credentials, a host the policy accepts, and where a
//! redirect's `Location` points relative to the URL that sent it.

use std::net::IpAddr;

use super::FetchError;

/// Where one request of a fetch goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https` (or `http`).
    pub https: bool,
    /// The host as written, without IPv6 brackets, lower case.
    pub host: String,
    /// The host when it is an IP address literal.
    pub ip: Option<IpAddr>,
    /// The port (443 or 80 when the URL names none).
    pub port: u16,
    /// `/path?query` (at least `/`).
    pub path: String,
}

impl Target {
    /// Parses an absolute `http(s)` URL; `allow_http` admits plain `http`.
    pub fn parse(url: &str, allow_http: bool) -> Result<Self, FetchError> {
        let refuse = |m: String| FetchError::Refused(m);
        // The fragment never goes to the server.
        let url = url.split('#').next().unwrap_or_default();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| refuse("not an absolute URL".into()))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" if allow_http => false,
            "http" => {
                return Err(refuse(
                    "plain http image URLs are not fetched (https or data: only; \
                     images.fetch_allow_http)"
                        .into(),
                ));
            }
            other => {
                return Err(refuse(format!(
                    "the {other:?} scheme is not fetched (https or data: only)"
                )));
            }
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.contains('@') {
            return Err(refuse(
                "URLs with credentials (user@host) are refused".into(),
            ));
        }
        if authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
        {
            return Err(refuse(
                "the URL's host has characters a host cannot have".into(),
            ));
        }
        let (host, port) = split_host_port(authority)?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            return Err(refuse("the URL has no host".into()));
        }
        let bracketed = authority.starts_with('[');
        let ip = match host.parse::<IpAddr>() {
            Ok(ip) if bracketed == ip.is_ipv6() => Some(ip),
            _ if bracketed => {
                return Err(refuse(format!("{host:?} is not an IPv6 address")));
            }
            // Host names in ASCII (internationalised names as punycode, `xn--`).
            Err(_)
                if !host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)) =>
            {
                return Err(refuse(format!("{host:?} is not a valid host name")));
            }
            _ => None,
        };
        if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(refuse(
                "the URL's path has spaces or control characters".into(),
            ));
        }
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Self {
            port: port.unwrap_or(if https { 443 } else { 80 }),
            https,
            host,
            ip,
            path,
        })
    }

    /// `host[:port]` as the `Host` header carries it.
    pub fn authority(&self) -> String {
        let host = match self.ip {
            Some(IpAddr::V6(_)) => format!("[{}]", self.host),
            _ => self.host.clone(),
        };
        let default = if self.https { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The absolute URL a redirect's `location` names, relative to this target.
    pub fn join(&self, location: &str) -> String {
        let scheme = if self.https { "https" } else { "http" };
        let location = location.trim();
        if has_scheme(location) {
            location.to_owned()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("{scheme}://{rest}")
        } else if location.starts_with('/') {
            format!("{scheme}://{}{location}", self.authority())
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            let dir = if dir.is_empty() { "/" } else { dir };
            format!("{scheme}://{}{dir}{location}", self.authority())
        }
    }
}

/// Whether `s` starts with `scheme:` (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn has_scheme(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), FetchError> {
    let bad_port = || FetchError::Refused(format!("{authority:?} has an invalid port"));
    let parse_port = |p: &str| {
        if p.is_empty() {
            Ok(None)
        } else {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .map(Some)
                .ok_or_else(bad_port)
        }
    };
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| FetchError::Refused(format!("{authority:?}: unclosed '['")))?;
        return match after {
            "" => Ok((host, None)),
            p => Ok((host, parse_port(p.strip_prefix(':').ok_or_else(bad_port)?)?)),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Ok((host, parse_port(port)?)),
        None => Ok((authority, None)),
    }
}

/// Whether `host` is one of `allowed` (`example.com`, or `*.example.com` for its subdomains);
/// an empty list allows every host.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    allowed.is_empty()
        || allowed.iter().any(|pattern| {
            let pattern = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|head| head.ends_with('.') && head.len() > 1),
                None => host == pattern,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target, FetchError> {
        Target::parse(url, false)
    }

    #[test]
    fn urls_are_split_into_what_a_fetch_needs() {
        let t = parse("https://Images.Example.com./a/b.png?x=1#frag").unwrap();
        assert_eq!(t.host, "images.example.com");
        assert_eq!((t.port, t.path.as_str(), t.ip), (443, "/a/b.png?x=1", None));
        let t = parse("https://[2606:4700::1111]:8443").unwrap();
        assert_eq!(t.ip, Some("2606:4700::1111".parse().unwrap()));
        assert_eq!((t.port, t.path.as_str()), (8443, "/"));
        assert_eq!(t.authority(), "[2606:4700::1111]:8443");
        let t = parse("https://example.com?q").unwrap();
        assert_eq!(t.path, "/?q");
        let t = Target::parse("http://example.com/x", true).unwrap();
        assert_eq!((t.https, t.port), (false, 80));
    }

    #[test]
    fn schemes_credentials_and_malformed_hosts_are_refused() {
        for (url, why) in [
            ("http://example.com/a.png", "plain http"),
            ("ftp://example.com/a.png", "\"ftp\" scheme"),
            ("file:///etc/passwd", "\"file\" scheme"),
            ("/etc/passwd", "not an absolute"),
            ("gopher://127.0.0.1:70/", "\"gopher\" scheme"),
            ("https://user:pass@example.com/", "credentials"),
            ("https://example.com@127.0.0.1/", "credentials"),
            ("https://[::1/", "unclosed"),
            ("https://[127.0.0.1]/", "not an IPv6"),
            ("https://example.com:99999/", "invalid port"),
            ("https://example.com:0/", "invalid port"),
            ("https://example.com:80:80/", "not a valid host name"),
            ("https://exa%6dple.com/", "not a valid host name"),
            ("https:///path", "no host"),
            ("https://exa mple.com/", "characters"),
            ("https://example.com\\@127.0.0.1/", "credentials"),
            ("https://example.com/a b", "spaces"),
            ("https://example.com/\r\nX-Injected: 1", "spaces or control"),
        ] {
            let err = parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url} was accepted"))
                .to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn redirects_resolve_against_the_url_that_sent_them() {
        let t = parse("https://a.example:8443/img/cat.png?s=1").unwrap();
        assert_eq!(t.join("https://b.example/x"), "https://b.example/x");
        assert_eq!(t.join("//c.example/y"), "https://c.example/y");
        assert_eq!(t.join("/z.png"), "https://a.example:8443/z.png");
        assert_eq!(t.join("dog.png"), "https://a.example:8443/img/dog.png");
        assert_eq!(
            t.join("dog.png?u=http://x"),
            "https://a.example:8443/img/dog.png?u=http://x"
        );
        assert_eq!(t.join("HTTP://10.0.0.1/"), "HTTP://10.0.0.1/");
    }

    #[test]
    fn host_patterns_match_exact_names_and_subdomains() {
        let allowed = vec!["cdn.example.com".to_owned(), "*.images.example".to_owned()];
        assert!(host_allowed("cdn.example.com", &allowed));
        assert!(host_allowed("a.images.example", &allowed));
        assert!(host_allowed("a.b.images.example", &allowed));
        assert!(!host_allowed("images.example", &allowed));
        assert!(!host_allowed("evilimages.example", &allowed));
        assert!(!host_allowed("cdn.example.com.evil", &allowed));
        assert!(host_allowed("anything", &[]));
    }
}
