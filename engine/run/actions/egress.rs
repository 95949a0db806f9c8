//! Egress rules of `http:` tasks: which addresses a request may reach.
//!
//! An `http:` task's URL is usually rendered from run input, and run input
//! comes from API callers, so without rules a caller could make the engine
//! call its own network: `127.0.0.1`, a cloud metadata service at
//! `169.254.169.254`, internal services, or anything a redirect points at.
//!
//! An [`Egress`] policy is checked where an address is final:
//!
//! - host names inside the HTTP client's DNS resolver (`GuardedResolver`),
//!   on the very addresses the client then connects to, so a name that
//!   resolves to a public address for a check and to a private one for the
//!   connection (DNS rebinding) cannot slip through;
//! - IP-literal URLs before the request is sent ([`Egress::check_url`]), since
//!   they never reach a resolver; the `url` crate has already normalised odd
//!   spellings (`0x7f000001`, `2130706433`, `127.1`) to the address;
//! - every redirect hop, in the client's redirect policy, which also counts
//!   hops.
//!
//! The order of the rules follows Stripe's smokescreen egress proxy: an
//! `allow` entry wins, then a `deny` entry refuses, then, with
//! `deny_private`, the special-purpose ranges of [`special_range`] refuse.
//! The default policy refuses nothing, so `taskweave run` keeps reaching
//! services on the developer's own machine; `deny_private = true` (or
//! `TASKWEAVE_HTTP_DENY_PRIVATE=1`) locks a server down.

use crate::diag::display_url;
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Where `http:` tasks may connect, and how redirects are followed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Egress {
    /// Refuse private, loopback, link-local, unspecified, multicast, CGNAT,
    /// reserved and IPv6 unique-local addresses (IPv4-mapped forms included).
    pub deny_private: bool,
    /// Entries that are always allowed (checked first).
    pub allow: Vec<HostRule>,
    /// Entries that are refused unless `allow` lists them.
    pub deny: Vec<HostRule>,
    /// Whether redirects are followed at all; when not, a 3xx response is
    /// the answer (and fails the task as any non-2xx does).
    pub follow_redirects: bool,
    /// How many redirects one request may follow.
    pub max_redirects: usize,
}

/// The default number of redirects a request may follow.
pub const DEFAULT_MAX_REDIRECTS: usize = 10;

impl Default for Egress {
    fn default() -> Self {
        Egress { deny_private: false, allow: Vec::new(), deny: Vec::new(), follow_redirects: true, max_redirects: DEFAULT_MAX_REDIRECTS }
    }
}

/// One `allow` or `deny` entry: an address range, a host name, or every
/// subdomain of a name (`*.example.com`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostRule {
    /// A CIDR (`10.0.0.0/8`) or one address (`10.0.0.5`, stored as a /32 or /128).
    Net(IpNet),
    /// A host name, lowercase, without a trailing dot.
    Name(String),
    /// `*.example.com`: every name under `example.com` (not the name itself).
    Suffix(String),
}

impl std::fmt::Display for HostRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostRule::Net(n) if n.prefix_len() == n.max_prefix_len() => write!(f, "{}", n.addr()),
            HostRule::Net(n) => write!(f, "{n}"),
            HostRule::Name(s) => f.write_str(s),
            HostRule::Suffix(s) => write!(f, "*.{s}"),
        }
    }
}

impl FromStr for HostRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<IpNet>() {
            return Ok(HostRule::Net(n.trunc()));
        }
        if let Ok(ip) = t.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return Ok(HostRule::Net(IpNet::from(ip.to_canonical())));
        }
        let bad = || {
            format!(
                "`{s}` is not a CIDR, an IP address or a host name (like `10.0.0.0/8`, `10.0.0.5`, `api.example.com` or `*.example.com`)"
            )
        };
        let (suffix, name) = match t.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let label_ok = |l: &str| {
            !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        // A last label of digits only is a malformed address (`10.0.0.256`), not a name.
        let numeric = name.rsplit('.').next().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) || numeric {
            return Err(bad());
        }
        Ok(if suffix { HostRule::Suffix(name) } else { HostRule::Name(name) })
    }
}

impl<'de> serde::Deserialize<'de> for HostRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl HostRule {
    fn matches_name(&self, host: &str) -> bool {
        match self {
            HostRule::Net(_) => false,
            HostRule::Name(n) => n == host,
            HostRule::Suffix(s) => host.len() > s.len() + 1 && host.ends_with(s.as_str()) && host[..host.len() - s.len()].ends_with('.'),
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        matches!(self, HostRule::Net(n) if n.contains(&ip))
    }
}

/// A request the policy refuses; the message names the rule that refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("http: {0}")]
pub struct Refused(pub String);

impl Refused {
    /// The refusal behind a transport error, if a policy check caused it.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(r) = err.downcast_ref::<Refused>() {
                return Some(r);
            }
            cur = err.source();
        }
        None
    }
}

/// Whether the policy decided by name, before any address is looked at.
enum ByName<'a> {
    Allowed,
    Denied(&'a HostRule),
    Undecided,
}

impl Egress {
    /// Whether anything is refused at all (the default policy refuses nothing).
    pub fn is_restricted(&self) -> bool {
        self.deny_private || !self.deny.is_empty()
    }

    fn by_name(&self, host: &str) -> ByName<'_> {
        if self.allow.iter().any(|r| r.matches_name(host)) {
            return ByName::Allowed;
        }
        match self.deny.iter().find(|r| r.matches_name(host)) {
            Some(r) => ByName::Denied(r),
            None => ByName::Undecided,
        }
    }

    /// Check one address. `via` is the host name it was resolved from, if any.
    fn check_ip(&self, ip: IpAddr, via: Option<&str>) -> Result<(), Refused> {
        let ip = ip.to_canonical();
        let what = match via {
            Some(host) => format!("{host} resolves to {ip}, which"),
            None => ip.to_string(),
        };
        if self.allow.iter().any(|r| r.matches_ip(ip)) {
            return Ok(());
        }
        if let Some(r) = self.deny.iter().find(|r| r.matches_ip(ip)) {
            return Err(Refused(format!("{what} is in the deny list ([actions.http] deny has \"{r}\")")));
        }
        if self.deny_private
            && let Some(label) = special_range(ip)
        {
            let entry = via.map_or_else(|| ip.to_string(), str::to_string);
            return Err(Refused(format!(
                "{what} is in a denied range ({label}); allow it with [actions.http] allow = [\"{entry}\"], or set deny_private = false"
            )));
        }
        Ok(())
    }

    /// Check a URL before it is requested (the first request and every
    /// redirect hop): an IP-literal host is checked here, a host name against
    /// the name rules (its addresses are checked when it is resolved).
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip), None),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip), None),
            Some(url::Host::Domain(name)) => match self.by_name(&normal_name(name)) {
                ByName::Denied(r) => Err(Refused(format!("host {name} is in the deny list ([actions.http] deny has \"{r}\")"))),
                ByName::Allowed | ByName::Undecided => Ok(()),
            },
            None => Err(Refused(format!("`{url}` has no host"))),
        }
    }

    /// Keep the resolved addresses of `host` that the policy allows; refuse
    /// when none is left.
    fn filter_resolved(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let name = normal_name(host);
        match self.by_name(&name) {
            ByName::Allowed => return Ok(addrs),
            ByName::Denied(r) => return Err(Refused(format!("host {name} is in the deny list ([actions.http] deny has \"{r}\")"))),
            ByName::Undecided => {}
        }
        let mut first_refusal = None;
        let mut kept = Vec::with_capacity(addrs.len());
        for a in addrs {
            match self.check_ip(a.ip(), Some(&name)) {
                Ok(()) => kept.push(a),
                Err(r) => {
                    first_refusal.get_or_insert(r);
                }
            }
        }
        match (kept.is_empty(), first_refusal) {
            (true, Some(r)) => Err(r),
            (true, None) => Err(Refused(format!("{name} resolves to no address"))),
            (false, _) => Ok(kept),
        }
    }

    fn redirect_policy(self: &Arc<Self>) -> reqwest::redirect::Policy {
        if !self.follow_redirects {
            return reqwest::redirect::Policy::none();
        }
        let policy = Arc::clone(self);
        reqwest::redirect::Policy::custom(move |attempt| {
            // `previous` holds the first URL and every hop before this one.
            if attempt.previous().len() > policy.max_redirects {
                let n = policy.max_redirects;
                return attempt.error(Refused(format!(
                    "stopped after {n} redirect{} ([actions.http] max_redirects = {n})",
                    if n == 1 { "" } else { "s" }
                )));
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(r) => {
                    let to = display_url(attempt.url().as_str());
                    attempt.error(Refused(format!("redirect to {to}: {}", r.0)))
                }
            }
        })
    }
}

/// A host name as the rules compare it: lowercase, without a trailing dot.
fn normal_name(host: &str) -> String {
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

/// The special-purpose range an address belongs to, if any (what
/// `deny_private` refuses). Written out here rather than taken from
/// `std`'s `is_global`, which is not stable; the ranges are those of the
/// IANA special-purpose registries that are not reachable on the internet.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: [(u32, u8, &str); 11] = [
        (0x0000_0000, 8, "unspecified"),                  // 0.0.0.0/8, "this network"
        (0x0a00_0000, 8, "private"),                      // 10.0.0.0/8
        (0x6440_0000, 10, "shared address space, CGNAT"), // 100.64.0.0/10
        (0x7f00_0000, 8, "loopback"),                     // 127.0.0.0/8
        (0xa9fe_0000, 16, "link-local"),                  // 169.254.0.0/16, cloud metadata
        (0xac10_0000, 12, "private"),                     // 172.16.0.0/12
        (0xc000_0000, 24, "IETF protocol assignments"),   // 192.0.0.0/24
        (0xc0a8_0000, 16, "private"),                     // 192.168.0.0/16
        (0xc612_0000, 15, "benchmarking"),                // 198.18.0.0/15
        (0xe000_0000, 4, "multicast"),                    // 224.0.0.0/4
        (0xf000_0000, 4, "reserved"),                     // 240.0.0.0/4 and the broadcast address
    ];
    let bits = u32::from(ip);
    RANGES.iter().find(|(net, len, _)| bits >> (32 - len) == net >> (32 - len)).map(|(_, _, label)| *label)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address that a
    // gateway will connect to: judge that one.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let v4 = Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32);
        return special_v4(v4);
    }
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32);
        return special_v4(v4);
    }
    match s[0] {
        0 if s[1..6] == [0, 0, 0, 0, 0] => Some("IPv4-compatible, deprecated"), // ::/96
        0x0064 if s[1] == 0xff9b && s[2] == 1 => Some("private"),               // 64:ff9b:1::/48, local NAT64
        0x0100 if s[1..4] == [0, 0, 0] => Some("discard-only"),                 // 100::/64
        x if x & 0xfe00 == 0xfc00 => Some("unique local"),                      // fc00::/7
        x if x & 0xffc0 == 0xfe80 => Some("link-local"),                        // fe80::/10
        x if x & 0xffc0 == 0xfec0 => Some("site-local, deprecated"),            // fec0::/10
        x if x & 0xff00 == 0xff00 => Some("multicast"),                         // ff00::/8
        _ => None,
    }
}

/// The HTTP client's resolver: the system's (`getaddrinfo` on the blocking
/// pool, like reqwest's own), then only the addresses the policy allows.
struct GuardedResolver {
    policy: Arc<Egress>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = policy.filter_resolved(&host, found)?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client `http:` tasks use under `policy`. Clients are built once per
/// distinct policy (a process has one or two) and shared, so connection
/// pools and TLS set-up are reused across tasks.
pub(crate) fn client(policy: &Egress) -> Result<reqwest::Client, super::ActionError> {
    static CLIENTS: OnceLock<Mutex<HashMap<Egress, reqwest::Client>>> = OnceLock::new();
    let clients = CLIENTS.get_or_init(Default::default);
    let mut map = clients.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get(policy) {
        return Ok(c.clone());
    }
    let shared = Arc::new(policy.clone());
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("taskweave/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .dns_resolver(GuardedResolver { policy: Arc::clone(&shared) })
        .redirect(shared.redirect_policy());
    if policy.is_restricted() {
        // Through a proxy, the address connected to is the proxy's, and the
        // target's would never be checked.
        b = b.no_proxy();
    }
    let c = b.build().map_err(|e| super::ActionError::Permanent(format!("cannot build the HTTP client: {}", error_chain(&e))))?;
    map.insert(policy.clone(), c.clone());
    Ok(c)
}

/// An error and its sources, `: `-joined (reqwest's own message is terse).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn locked() -> Egress {
        Egress { deny_private: true, ..Egress::default() }
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn rules_parse_and_print() {
        for (text, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("10.1.2.3/8", "10.0.0.0/8"),
            ("10.0.0.5", "10.0.0.5"),
            ("::ffff:10.0.0.5", "10.0.0.5"),
            ("[fd00::1]", "fd00::1"),
            ("API.Example.com.", "api.example.com"),
            ("*.example.com", "*.example.com"),
        ] {
            assert_eq!(text.parse::<HostRule>().unwrap().to_string(), shown, "{text}");
        }
        for bad in ["", "10.0.0.0/33", "10.0.0.256", "http://x", "a..b", "*.", "bad host", "-x.com"] {
            assert!(bad.parse::<HostRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn special_ranges_cover_the_internal_addresses() {
        for (ip, label) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.5", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared address space, CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a00:5", "private"),
            ("2002:7f00:1::", "loopback"),
            ("fd12:3456::1", "unique local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
        ] {
            assert_eq!(special_range(ip.parse().unwrap()), Some(label), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(special_range(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn odd_spellings_of_loopback_are_refused() {
        let e = locked();
        for u in [
            "http://127.0.0.1:8080/",
            "http://0x7f000001/",
            "http://2130706433/",
            "http://127.1/",
            "http://0177.0.0.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::1]/",
            "http://0/",
        ] {
            let r = e.check_url(&url(u)).expect_err(u);
            assert!(r.0.contains("denied range"), "{u}: {r}");
        }
        assert!(e.check_url(&url("http://93.184.215.14/")).is_ok());
        assert!(Egress::default().check_url(&url("http://127.0.0.1/")).is_ok());
    }

    #[test]
    fn allow_wins_then_deny_then_private() {
        let e = Egress {
            deny_private: true,
            allow: vec!["10.0.0.5".parse().unwrap(), "internal.example".parse().unwrap()],
            deny: vec!["10.0.0.0/8".parse().unwrap(), "8.8.8.0/24".parse().unwrap(), "*.evil.example".parse().unwrap()],
            ..Egress::default()
        };
        assert!(e.check_url(&url("http://10.0.0.5/")).is_ok());
        let r = e.check_url(&url("http://10.0.0.6/")).unwrap_err();
        assert_eq!(r.to_string(), "http: 10.0.0.6 is in the deny list ([actions.http] deny has \"10.0.0.0/8\")");
        let r = e.check_url(&url("http://8.8.8.8/")).unwrap_err();
        assert!(r.0.contains("8.8.8.0/24"), "{r}");
        let r = e.check_url(&url("http://192.168.0.1/")).unwrap_err();
        assert_eq!(
            r.to_string(),
            "http: 192.168.0.1 is in a denied range (private); allow it with [actions.http] allow = [\"192.168.0.1\"], or set deny_private = false"
        );
        let r = e.check_url(&url("http://a.EVIL.example./")).unwrap_err();
        assert!(r.0.contains("*.evil.example"), "{r}");
        assert!(e.check_url(&url("http://evil.example/")).is_ok());

        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 0);
        // A name on the allow list may resolve anywhere.
        assert_eq!(e.filter_resolved("internal.example", vec![at("10.9.9.9")]).unwrap(), vec![at("10.9.9.9")]);
        // Otherwise only the allowed addresses are kept ...
        assert_eq!(e.filter_resolved("mixed.example", vec![at("127.0.0.1"), at("1.1.1.1")]).unwrap(), vec![at("1.1.1.1")]);
        // ... and none left is a refusal naming the name and the address.
        let r = e.filter_resolved("localhost", vec![at("127.0.0.1"), at("::1")]).unwrap_err();
        assert_eq!(
            r.to_string(),
            "http: localhost resolves to 127.0.0.1, which is in a denied range (loopback); allow it with [actions.http] allow = [\"localhost\"], or set deny_private = false"
        );
    }
}
