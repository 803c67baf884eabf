//! The admin protocol between the `coord` CLI and a running `coord serve`: one JSON request line
//! and one JSON answer line per connection over a 0600 Unix socket in the state dir.

use serde::{Deserialize, Serialize};

use crate::map::FunnelRoute;
use crate::node::Node;

/// File name of the admin socket inside coord's state dir.
pub const ADMIN_SOCKET: &str = "admin.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    AuthkeyCreate {
        reusable: bool,
        ephemeral: bool,
        /// Lifetime in seconds from now.
        expires_in_secs: u64,
        /// Tags with the `tag:` prefix.
        tags: Vec<String>,
    },
    AuthkeyList,
    AuthkeyRevoke {
        id: String,
    },
    NodesList,
    /// `node` is a node id or name.
    NodesRemove {
        node: String,
    },
    NodesExpire {
        node: String,
    },
    /// Registers a device running a stock WireGuard client: its key pair was generated elsewhere
    /// (`wg genkey`), it has no auth key and never opens a map stream.
    NodesAddExternal {
        name: String,
        /// The device's WireGuard public key (base64, as `wg pubkey` prints it).
        public_key: String,
    },
    /// Every live funnel.
    FunnelsList,
    /// Closes a funnel whichever node opened it (its node drops it too).
    FunnelsClose {
        name: String,
    },
    PolicyGet,
    /// `policy` is the document's text, so errors can point into it.
    PolicySet {
        policy: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    /// The only answer that ever carries an auth key's secret: shown once, stored nowhere.
    AuthkeyCreated {
        key: String,
        info: AuthKeyInfo,
    },
    Authkeys {
        keys: Vec<AuthKeyInfo>,
    },
    Nodes {
        nodes: Vec<NodeInfo>,
    },
    /// An external node was created: `config` is a wg-quick configuration for the device,
    /// with a placeholder where its private key goes.
    ExternalNodeAdded {
        node: NodeInfo,
        config: String,
    },
    Funnels {
        funnels: Vec<FunnelInfo>,
    },
    Policy {
        policy: String,
    },
    Done {
        message: String,
    },
    Error {
        message: String,
    },
}

/// An auth key as listings show it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthKeyInfo {
    pub id: String,
    pub created: u64,
    pub expires: u64,
    pub reusable: bool,
    pub ephemeral: bool,
    pub tags: Vec<String>,
    /// How many nodes registered with it.
    pub uses: u64,
    pub revoked: bool,
}

/// A live funnel as `coord funnels list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunnelInfo {
    pub route: FunnelRoute,
    /// The name of the node that opened it.
    pub node_name: String,
    /// Its public URL.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node: Node,
    pub created: u64,
    /// Unix seconds the node was last connected; `None` if it never was.
    pub last_seen: Option<u64>,
    pub ephemeral: bool,
    pub expired: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_fixtures() {
        let r: AdminRequest = serde_json::from_str(
            r#"{"cmd":"authkey_create","reusable":true,"ephemeral":false,"expires_in_secs":3600,"tags":["tag:edge"]}"#,
        )
        .unwrap();
        assert!(matches!(
            r,
            AdminRequest::AuthkeyCreate { reusable: true, .. }
        ));
        let r: AdminRequest =
            serde_json::from_str(r#"{"cmd":"nodes_remove","node":"laptop"}"#).unwrap();
        assert_eq!(
            r,
            AdminRequest::NodesRemove {
                node: "laptop".into()
            }
        );
        let r: AdminRequest = serde_json::from_str(
            r#"{"cmd":"nodes_add_external","name":"phone","public_key":"AAAA"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            AdminRequest::NodesAddExternal {
                name: "phone".into(),
                public_key: "AAAA".into()
            }
        );
        let r: AdminRequest =
            serde_json::from_str(r#"{"cmd":"funnels_close","name":"demo"}"#).unwrap();
        assert_eq!(
            r,
            AdminRequest::FunnelsClose {
                name: "demo".into()
            }
        );
        assert!(serde_json::from_str::<AdminRequest>(r#"{"cmd":"drop_tables"}"#).is_err());
        let done = AdminResponse::Done {
            message: "ok".into(),
        };
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"result":"done","message":"ok"}"#
        );
    }
}
