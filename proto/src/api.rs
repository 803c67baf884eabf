//! Request and response bodies of coord's HTTPS API, and its error body.
//!
//! | route | auth | body → answer |
//! |---|---|---|
//! | `GET /v1/info` | none | → [`CoordInfo`] |
//! | `POST /v1/register` | signed | [`RegisterRequest`] → [`RegisterResponse`] |
//! | `POST /v1/endpoints` | signed | [`EndpointsRequest`] → `{}` |
//! | `GET /v1/map` | signed | → stream of [`crate::map::MapMessage`] lines |
//! | `POST /v1/funnels` | signed | [`FunnelRequest`] → [`FunnelResponse`] |
//! | `GET /v1/funnels` | signed | → [`FunnelList`] (the caller's live funnels) |
//! | `DELETE /v1/funnels/NAME` | signed | → `{}` |
//! | `GET /healthz`, `GET /metrics` | none | → text |

use std::net::SocketAddr;

use keys::PublicKey;
use serde::{Deserialize, Serialize};

use crate::map::FunnelRoute;
use crate::node::Node;

/// Largest request body coord reads; larger ones are refused before they are read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordInfo {
    pub protocol_version: u32,
    /// The coordinator's x25519 key: nodes sign requests for it.
    pub coord_key: PublicKey,
    pub domain: String,
    /// The domain funnels are published under (`https://NAME.<funnel_domain>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funnel_domain: Option<String>,
}

/// Registration. The node's public key travels in the signature headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub version: u32,
    /// Required for a new node or to renew an expired one; a known node may omit it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_key: Option<String>,
    pub hostname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub node: Node,
    /// True when this request created the node.
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointsRequest {
    pub version: u32,
    pub endpoints: Vec<SocketAddr>,
}

/// Opens a funnel for the calling node, or renews it (same name: port and expiry are replaced).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelRequest {
    /// The public name (`NAME.<funnel domain>`), a DNS label; the node's own name if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The local port on the node that the funnel publishes.
    pub port: u16,
    /// How long the funnel lives unless renewed; the policy grant's maximum (at most 24h) if
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// A live funnel and the public URL it answers on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelResponse {
    pub route: FunnelRoute,
    /// `https://NAME.<funnel domain>/`, with `:PORT` when the edge does not listen on 443.
    pub url: String,
}

/// `GET /v1/funnels`: the caller's live funnels, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunnelList {
    pub funnels: Vec<FunnelResponse>,
}

/// Every error answer's body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable cause (`auth_key_expired`, `replayed_request`, ...).
    pub code: String,
    /// One line a person can act on.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures() {
        let req: RegisterRequest = serde_json::from_str(
            r#"{"version":1,"auth_key":"mfk_0011223344556677_00","hostname":"laptop"}"#,
        )
        .unwrap();
        assert_eq!(req.hostname, "laptop");
        assert!(serde_json::from_str::<RegisterRequest>(
            r#"{"version":1,"hostname":"a","admin":true}"#
        )
        .is_err());
        let ep: EndpointsRequest = serde_json::from_str(
            r#"{"version":1,"endpoints":["192.0.2.1:41641","[2001:db8::1]:41641"]}"#,
        )
        .unwrap();
        assert_eq!(ep.endpoints.len(), 2);
        let err = ErrorBody {
            error: ErrorDetail {
                code: "auth_key_expired".into(),
                message: "auth key expired".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"error":{"code":"auth_key_expired","message":"auth key expired"}}"#
        );
    }

    #[test]
    fn funnel_fixtures() {
        let req: FunnelRequest =
            serde_json::from_str(r#"{"name":"demo","port":3000,"ttl_secs":3600}"#).unwrap();
        assert_eq!(
            req,
            FunnelRequest {
                name: Some("demo".into()),
                port: 3000,
                ttl_secs: Some(3600),
            }
        );
        let short: FunnelRequest = serde_json::from_str(r#"{"port":3000}"#).unwrap();
        assert_eq!((short.name, short.ttl_secs), (None, None));
        assert_eq!(
            serde_json::to_string(&FunnelRequest {
                name: None,
                port: 8080,
                ttl_secs: None
            })
            .unwrap(),
            r#"{"port":8080}"#
        );
        for bad in [
            r#"{"port":0,"public":true}"#,
            r#"{"port":70000}"#,
            r#"{"port":-1}"#,
            r#"{"name":"demo"}"#,
            r#"{"port":3000,"ttl_secs":-5}"#,
        ] {
            assert!(serde_json::from_str::<FunnelRequest>(bad).is_err(), "{bad}");
        }

        let resp_json = r#"{"route":{"name":"demo","node":7,"port":3000,"expires":1800003600},"url":"https://demo.funnel.localhost:8443/"}"#;
        let resp: FunnelResponse = serde_json::from_str(resp_json).unwrap();
        assert_eq!(resp.route.node, crate::NodeId(7));
        assert_eq!(resp.route.expires, 1_800_003_600);
        assert_eq!(serde_json::to_string(&resp).unwrap(), resp_json);
        let list: FunnelList =
            serde_json::from_str(&format!(r#"{{"funnels":[{resp_json}]}}"#)).unwrap();
        assert_eq!(list.funnels, vec![resp]);
        assert!(serde_json::from_str::<FunnelList>(r#"{"funnels":[],"more":1}"#).is_err());
    }
}
