//! Which servers we federate with: the `[federation] allow` and `deny` lists.
//!
//! An entry is a server name (`b.example`, `b.example:8448`, `127.0.0.3:8448`) or a wildcard
//! `*.example.org` that matches every subdomain of `example.org` (not `example.org` itself). An
//! entry without a port matches the name with any port. The deny list wins; an empty allow list
//! allows every server that is not denied. The same check guards both directions: inbound
//! requests from a refused server get 403, and nothing is sent to one.

use hush_federation::ids::ServerName;

/// One allow/deny entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `host` (any port) or `host:port` (that port only).
    Exact { host: String, port: Option<u16> },
    /// `*.suffix`: any name ending in `.suffix`.
    Subdomains(String),
}

impl Pattern {
    fn parse(entry: &str) -> Result<Pattern, String> {
        let entry = entry.trim();
        if let Some(suffix) = entry.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains(['*', ':']) {
                return Err(format!(
                    "`{entry}` is not a valid wildcard (use *.example.org)"
                ));
            }
            return Ok(Pattern::Subdomains(suffix.to_ascii_lowercase()));
        }
        let name = ServerName::parse(entry).map_err(|e| format!("`{entry}`: {e}"))?;
        Ok(Pattern::Exact {
            host: name.host_str().to_ascii_lowercase(),
            port: name.port(),
        })
    }

    fn matches(&self, server: &ServerName) -> bool {
        let host = server.host_str().to_ascii_lowercase();
        match self {
            Pattern::Exact { host: h, port } => {
                *h == host && port.is_none_or(|p| Some(p) == server.port())
            }
            Pattern::Subdomains(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        }
    }
}

/// The compiled allow and deny lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPolicy {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
}

impl ServerPolicy {
    /// Compiles the lists; an invalid entry is an error naming it.
    pub fn new(allow: &[String], deny: &[String]) -> Result<ServerPolicy, String> {
        let parse = |list: &[String]| {
            list.iter()
                .map(|e| Pattern::parse(e))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(ServerPolicy {
            allow: parse(allow)?,
            deny: parse(deny)?,
        })
    }

    /// Whether we talk to `server` at all.
    pub fn allows(&self, server: &ServerName) -> bool {
        if self.deny.iter().any(|p| p.matches(server)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|p| p.matches(server))
    }

    /// Like [`ServerPolicy::allows`] for a name that may not parse (which is refused).
    pub fn allows_str(&self, server: &str) -> bool {
        ServerName::parse(server).is_ok_and(|name| self.allows(&name))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn name(s: &str) -> ServerName {
        ServerName::parse(s).unwrap()
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn empty_lists_allow_everyone() {
        let policy = ServerPolicy::new(&[], &[]).unwrap();
        assert!(policy.allows(&name("anything.example")));
    }

    #[test]
    fn deny_wins_and_ports_are_optional() {
        let policy = ServerPolicy::new(
            &list(&["*.good.example", "127.0.0.3"]),
            &list(&["bad.good.example", "127.0.0.3:9000"]),
        )
        .unwrap();
        assert!(policy.allows(&name("a.good.example")));
        assert!(policy.allows(&name("x.y.good.example:8448")));
        assert!(
            !policy.allows(&name("good.example")),
            "wildcard is subdomains only"
        );
        assert!(!policy.allows(&name("evilgood.example")));
        assert!(!policy.allows(&name("bad.good.example")));
        assert!(policy.allows(&name("127.0.0.3:8448")));
        assert!(!policy.allows(&name("127.0.0.3:9000")));
        assert!(!policy.allows(&name("127.0.0.4:8448")));
        assert!(!policy.allows_str("not a name"));
    }

    #[test]
    fn bad_entries_are_reported() {
        assert!(ServerPolicy::new(&list(&["*."]), &[]).is_err());
        assert!(ServerPolicy::new(&[], &list(&["bad name"])).is_err());
    }
}
