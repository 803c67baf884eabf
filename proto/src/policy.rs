//! The mesh policy: who reaches whom on which ports, who may open a funnel, which tags are edges.
//!
//! A policy is a JSON document ([`PolicyDoc`]); [`Policy::parse`] validates it and names the field
//! and the reason when it is wrong. Evaluation is pure: [`Policy::can_see`] decides which peers a
//! node is told about, [`Policy::filter_for`] the inbound packet filter a node enforces.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::map::FilterRule;
use crate::node::Node;

/// Longest funnel TTL any grant may allow.
pub const MAX_FUNNEL_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The policy document as written by the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    /// Who may reach whom. A node learns of a peer when a rule lets either reach the other.
    #[serde(default)]
    pub acls: Vec<AclRule>,
    /// Which nodes may publish which local ports through a funnel.
    #[serde(default)]
    pub funnel: Vec<FunnelGrant>,
    /// Which tags mark edge nodes, and the domains they serve.
    #[serde(default)]
    pub edges: Vec<EdgeRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub src: Vec<Selector>,
    pub dst: Vec<Selector>,
    #[serde(default = "all_ports")]
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub proto: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelGrant {
    pub nodes: Vec<Selector>,
    pub ports: Vec<PortRange>,
    /// Longest TTL a funnel under this grant may have (default 24h, at most 30d).
    #[serde(
        default,
        with = "crate::duration::serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_ttl: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeRule {
    pub tag: Selector,
    /// Funnel domains this edge serves; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

fn all_ports() -> Vec<PortRange> {
    vec![PortRange::ALL]
}

/// Who a rule applies to: everyone (`*`), a tag (`tag:edge`) or one node by name (`laptop`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    Any,
    Tag(String),
    Node(String),
}

impl Selector {
    pub fn matches(&self, node: &Node) -> bool {
        match self {
            Selector::Any => true,
            Selector::Tag(t) => node
                .tags
                .iter()
                .any(|nt| nt.strip_prefix("tag:") == Some(t)),
            Selector::Node(n) => node.name == *n,
        }
    }
}

/// Whether `s` is a DNS label: 1–63 of `a-z0-9-`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl FromStr for Selector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Selector::Any);
        }
        if let Some(tag) = s.strip_prefix("tag:") {
            return if is_dns_label(tag) {
                Ok(Selector::Tag(tag.to_owned()))
            } else {
                Err(format!(
                    "invalid tag {s:?}: a tag is tag:NAME with NAME of a-z, 0-9 and -"
                ))
            };
        }
        if is_dns_label(s) {
            Ok(Selector::Node(s.to_owned()))
        } else {
            Err(format!(
                "invalid selector {s:?}: expected \"*\", \"tag:NAME\" or a node name"
            ))
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Tag(t) => write!(f, "tag:{t}"),
            Selector::Node(n) => f.write_str(n),
        }
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// An inclusive port range; `*` is 0–65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { lo: 0, hi: 65535 };
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "*" {
            return Ok(Self::ALL);
        }
        let parse = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(format!(
                    "invalid port {s:?}: expected \"*\", a port 1-65535 or a range \"LO-HI\""
                )),
                Ok(n) => Ok(n),
            }
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let p = parse(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(format!("invalid port range {s:?}: {lo} is above {hi}"));
        }
        Ok(Self { lo, hi })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Self::ALL {
            f.write_str("*")
        } else if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        let text = match Raw::deserialize(d)? {
            Raw::Num(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl Protocol {
    pub fn covers(self, other: Protocol) -> bool {
        self == Protocol::Any || self == other
    }
}

/// A policy that did not validate: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy is invalid at {path}: {reason}")]
pub struct PolicyError {
    /// The field, as `acls[2].src[0]`; `.` for the whole document.
    pub path: String,
    pub reason: String,
}

/// A validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    doc: PolicyDoc,
}

impl Default for Policy {
    /// Members reach each other on every port; nobody may funnel; `tag:edge` marks edges.
    fn default() -> Self {
        Self {
            doc: PolicyDoc {
                acls: vec![AclRule {
                    src: vec![Selector::Any],
                    dst: vec![Selector::Any],
                    ports: all_ports(),
                    proto: Protocol::Any,
                }],
                funnel: vec![],
                edges: vec![EdgeRule {
                    tag: Selector::Tag("edge".into()),
                    domains: vec![],
                }],
            },
        }
    }
}

fn invalid(path: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.into(),
        reason: reason.into(),
    }
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn parse(json: &str) -> Result<Self, PolicyError> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let doc: PolicyDoc = serde_path_to_error::deserialize(de).map_err(|e| {
            // `?` is serde_path_to_error's "no field yet": the document as a whole.
            let path = match e.path().to_string() {
                p if p == "?" => ".".to_owned(),
                p => p,
            };
            let inner = e.into_inner();
            // serde_json appends " at line L column C"; keep it, it helps with big files.
            invalid(path, inner.to_string())
        })?;
        Self::from_doc(doc)
    }

    /// Validates a document that was built or parsed elsewhere.
    pub fn from_doc(doc: PolicyDoc) -> Result<Self, PolicyError> {
        for (i, rule) in doc.acls.iter().enumerate() {
            if rule.src.is_empty() {
                return Err(invalid(
                    format!("acls[{i}].src"),
                    "must name at least one source",
                ));
            }
            if rule.dst.is_empty() {
                return Err(invalid(
                    format!("acls[{i}].dst"),
                    "must name at least one destination",
                ));
            }
            if rule.ports.is_empty() {
                return Err(invalid(
                    format!("acls[{i}].ports"),
                    "must name at least one port",
                ));
            }
        }
        for (i, grant) in doc.funnel.iter().enumerate() {
            if grant.nodes.is_empty() {
                return Err(invalid(
                    format!("funnel[{i}].nodes"),
                    "must name at least one node or tag",
                ));
            }
            if grant.ports.is_empty() {
                return Err(invalid(
                    format!("funnel[{i}].ports"),
                    "must name at least one port",
                ));
            }
            if let Some(ttl) = grant.max_ttl {
                if ttl.is_zero() || ttl > MAX_FUNNEL_TTL {
                    return Err(invalid(
                        format!("funnel[{i}].max_ttl"),
                        "must be more than 0 and at most 30d",
                    ));
                }
            }
        }
        for (i, edge) in doc.edges.iter().enumerate() {
            if !matches!(edge.tag, Selector::Tag(_)) {
                return Err(invalid(
                    format!("edges[{i}].tag"),
                    format!(
                        "{:?} is not a tag: edges are named by tag:NAME",
                        edge.tag.to_string()
                    ),
                ));
            }
            for (j, d) in edge.domains.iter().enumerate() {
                if !is_domain(d) {
                    return Err(invalid(
                        format!("edges[{i}].domains[{j}]"),
                        format!("{d:?} is not a domain name"),
                    ));
                }
            }
        }
        Ok(Self { doc })
    }

    pub fn doc(&self) -> &PolicyDoc {
        &self.doc
    }

    /// The document as pretty JSON (what `coord policy get` prints).
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.doc).unwrap_or_default()
    }

    /// Whether `a` may reach `b` on some port.
    pub fn reaches(&self, a: &Node, b: &Node) -> bool {
        self.doc
            .acls
            .iter()
            .any(|r| r.src.iter().any(|s| s.matches(a)) && r.dst.iter().any(|d| d.matches(b)))
    }

    /// Whether the ACLs tell `a` about `b`: either may reach the other. (coord adds the pairs of
    /// an edge and a node with a live funnel; the node's filter then admits the edge only on
    /// [`crate::map::FUNNEL_INGRESS_PORT`].)
    pub fn can_see(&self, a: &Node, b: &Node) -> bool {
        a.id != b.id && (self.reaches(a, b) || self.reaches(b, a))
    }

    /// Whether `src` may send `proto` traffic to `port` on `dst`.
    pub fn allows(&self, src: &Node, dst: &Node, proto: Protocol, port: u16) -> bool {
        self.doc.acls.iter().any(|r| {
            r.proto.covers(proto)
                && (proto == Protocol::Icmp || r.ports.iter().any(|p| p.contains(port)))
                && r.src.iter().any(|s| s.matches(src))
                && r.dst.iter().any(|d| d.matches(dst))
        })
    }

    /// The inbound packet filter `node` enforces: every rule whose destination includes it.
    pub fn filter_for(&self, node: &Node) -> Vec<FilterRule> {
        let mut out: Vec<FilterRule> = Vec::new();
        for r in &self.doc.acls {
            if !r.dst.iter().any(|d| d.matches(node)) {
                continue;
            }
            let rule = FilterRule {
                src: r.src.iter().map(ToString::to_string).collect(),
                proto: r.proto,
                ports: r.ports.clone(),
            };
            if !out.contains(&rule) {
                out.push(rule);
            }
        }
        out
    }

    /// Whether `node` is an edge.
    /// The policy as a coordinator that serves funnels under `domain` applies it: edge rules
    /// whose `domains` name only other domains are left out (their tags mark no edges there).
    #[must_use]
    pub fn for_funnel_domain(mut self, domain: &str) -> Self {
        let domain = domain.trim_end_matches('.');
        self.doc.edges.retain(|e| {
            e.domains.is_empty()
                || e.domains
                    .iter()
                    .any(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
        });
        self
    }

    pub fn is_edge(&self, node: &Node) -> bool {
        self.doc.edges.iter().any(|e| e.tag.matches(node))
    }

    /// The longest TTL `node` may give a funnel on `port`, or why it may not open one.
    pub fn funnel_ttl(&self, node: &Node, port: u16) -> Result<Duration, String> {
        let grants: Vec<&FunnelGrant> = self
            .doc
            .funnel
            .iter()
            .filter(|g| g.nodes.iter().any(|s| s.matches(node)))
            .collect();
        if grants.is_empty() {
            return Err(format!(
                "the policy has no funnel grant for node {:?}: add {{\"nodes\": [\"{}\"], \
                 \"ports\": [{port}]}} to \"funnel\"",
                node.name, node.name
            ));
        }
        grants
            .iter()
            .filter(|g| g.ports.iter().any(|p| p.contains(port)))
            .map(|g| g.max_ttl.unwrap_or(Duration::from_secs(24 * 3600)))
            .max()
            .ok_or_else(|| {
                format!(
                    "the policy's funnel grants for node {:?} do not include port {port}",
                    node.name
                )
            })
    }
}

impl FilterRule {
    /// Whether this rule lets `src` (a peer of the filtering node) send `proto` to `port`.
    pub fn admits(&self, src: &Node, proto: Protocol, port: u16) -> bool {
        self.proto.covers(proto)
            && (proto == Protocol::Icmp || self.ports.iter().any(|p| p.contains(port)))
            && self.src.iter().any(|s| {
                s.parse::<Selector>()
                    .map(|sel| sel.matches(src))
                    .unwrap_or(false)
            })
    }
}

fn is_domain(d: &str) -> bool {
    d.len() <= 253 && d.split('.').count() >= 2 && d.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::tests_support::node;

    #[test]
    fn default_policy_lets_members_reach_each_other_and_nobody_funnel() {
        let p = Policy::default();
        let a = node(1, "a");
        let b = node(2, "b");
        assert!(p.can_see(&a, &b));
        assert!(!p.can_see(&a, &a));
        assert!(p.allows(&a, &b, Protocol::Tcp, 22));
        assert!(p
            .funnel_ttl(&a, 3000)
            .unwrap_err()
            .contains("no funnel grant"));
    }

    #[test]
    fn tags_and_names_select() {
        let p = Policy::parse(
            r#"{
              "acls": [
                {"src": ["tag:dev"], "dst": ["db"], "ports": [5432], "proto": "tcp"},
                {"src": ["laptop"], "dst": ["tag:web"], "ports": ["80", "8000-8100"]}
              ],
              "funnel": [{"nodes": ["laptop"], "ports": ["3000"], "max_ttl": "2h"}]
            }"#,
        )
        .unwrap();
        let mut dev = node(1, "dev1");
        dev.tags = vec!["tag:dev".into()];
        let db = node(2, "db");
        let laptop = node(3, "laptop");
        let mut web = node(4, "web");
        web.tags = vec!["tag:web".into()];

        assert!(p.allows(&dev, &db, Protocol::Tcp, 5432));
        assert!(!p.allows(&dev, &db, Protocol::Udp, 5432));
        assert!(!p.allows(&dev, &db, Protocol::Tcp, 22));
        assert!(!p.allows(&db, &dev, Protocol::Tcp, 5432));
        assert!(
            p.can_see(&db, &dev),
            "the destination learns of its sources"
        );
        assert!(!p.can_see(&dev, &laptop));
        assert!(p.allows(&laptop, &web, Protocol::Udp, 8050));
        assert!(!p.allows(&laptop, &web, Protocol::Tcp, 8101));

        let f = p.filter_for(&db);
        assert_eq!(f.len(), 1);
        assert!(f[0].admits(&dev, Protocol::Tcp, 5432));
        assert!(!f[0].admits(&laptop, Protocol::Tcp, 5432));
        assert!(p.filter_for(&laptop).is_empty());

        assert_eq!(p.funnel_ttl(&laptop, 3000), Ok(Duration::from_secs(7200)));
        assert!(p
            .funnel_ttl(&laptop, 3001)
            .unwrap_err()
            .contains("port 3001"));
        assert!(p.funnel_ttl(&db, 3000).is_err());
    }

    #[test]
    fn invalid_policies_name_the_field() {
        let cases = [
            (
                r#"{"acls": [{"src": ["tag:"], "dst": ["*"]}]}"#,
                "acls[0].src[0]",
            ),
            (
                r#"{"acls": [{"src": ["*"], "dst": ["*"], "ports": ["0"]}]}"#,
                "acls[0].ports[0]",
            ),
            (
                r#"{"acls": [{"src": ["*"], "dst": ["*"], "ports": ["9-3"]}]}"#,
                "acls[0].ports[0]",
            ),
            (r#"{"acls": [{"src": [], "dst": ["*"]}]}"#, "acls[0].src"),
            (
                r#"{"acls": [{"src": ["*"], "dst": ["*"], "proto": "sctp"}]}"#,
                "acls[0].proto",
            ),
            (r#"{"acls": [], "bogus": 1}"#, "bogus"),
            (
                r#"{"funnel": [{"nodes": ["a"], "ports": [80], "max_ttl": "90d"}]}"#,
                "funnel[0].max_ttl",
            ),
            (
                r#"{"funnel": [{"nodes": ["a"], "ports": [80], "max_ttl": "soon"}]}"#,
                "funnel[0].max_ttl",
            ),
            (r#"{"edges": [{"tag": "edgebox"}]}"#, "edges[0].tag"),
            (
                r#"{"edges": [{"tag": "tag:edge", "domains": ["x"]}]}"#,
                "edges[0].domains[0]",
            ),
            (r#"{"acls": "#, "acls"),
            ("{", "."),
            ("not json", "."),
        ];
        for (json, path) in cases {
            let err = Policy::parse(json).unwrap_err();
            assert_eq!(err.path, path, "{json}: {err}");
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn the_example_policy_in_docs_parses() {
        let p = Policy::parse(include_str!("../../docs/policy.example.json")).unwrap();
        assert_eq!(p.doc().acls.len(), 3);
        assert_eq!(p.doc().edges[0].domains, vec!["funnel.example.com"]);
    }

    #[test]
    fn document_roundtrips() {
        let p = Policy::default();
        let again = Policy::parse(&p.to_json_pretty()).unwrap();
        assert_eq!(again, p);
        assert!(p.is_edge(&{
            let mut e = node(9, "edge");
            e.tags = vec!["tag:edge".into()];
            e
        }));
    }

    #[test]
    fn edge_rules_for_other_funnel_domains_are_left_out() {
        let p = Policy::parse(
            r#"{"edges": [{"tag": "tag:a", "domains": ["one.example"]},
                          {"tag": "tag:b", "domains": ["two.example", "one.example"]},
                          {"tag": "tag:c"}]}"#,
        )
        .unwrap();
        let tags = |p: &Policy| -> Vec<String> {
            p.doc().edges.iter().map(|e| e.tag.to_string()).collect()
        };
        assert_eq!(
            tags(&p.clone().for_funnel_domain("one.example")),
            ["tag:a", "tag:b", "tag:c"]
        );
        assert_eq!(
            tags(&p.clone().for_funnel_domain("two.example.")),
            ["tag:b", "tag:c"]
        );
        assert_eq!(tags(&p.for_funnel_domain("three.example")), ["tag:c"]);
    }
}
