//! Request and response bodies of coord's HTTPS API, and its error body.
//!
//! | route | auth | body → answer |
//! |---|---|---|
//! | `GET /v1/info` | none | → [`CoordInfo`] |
//! | `POST /v1/register` | signed | [`RegisterRequest`] → [`RegisterResponse`] |
//! | `POST /v1/endpoints` | signed | [`EndpointsRequest`] → `{}` |
//! | `GET /v1/map` | signed | → stream of [`crate::map::MapMessage`] lines |
//! | `GET /healthz`, `GET /metrics` | none | → text |

use std::net::SocketAddr;

use keys::PublicKey;
use serde::{Deserialize, Serialize};

use crate::node::Node;

/// Largest request body coord reads; larger ones are refused before they are read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordInfo {
    pub protocol_version: u32,
    /// The coordinator's x25519 key: nodes sign requests for it.
    pub coord_key: PublicKey,
    pub domain: String,
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
}
