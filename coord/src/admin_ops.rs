//! Admin commands, run on the mesh thread: auth keys, nodes, policy.

use std::time::{Duration, Instant};

use keys::authkey::AuthKeyToken;
use proto::admin::{AdminRequest, AdminResponse, AuthKeyInfo, NodeInfo};
use proto::policy::{is_dns_label, Policy};
use tracing::info;

use crate::service::{parse_key_id, unix_now, Service};
use crate::store::AuthKeyRecord;

/// Longest lifetime an auth key may be given.
pub const MAX_AUTHKEY_LIFETIME: Duration = Duration::from_secs(365 * 86400);

fn error(message: impl Into<String>) -> AdminResponse {
    AdminResponse::Error {
        message: message.into(),
    }
}

fn done(message: impl Into<String>) -> AdminResponse {
    AdminResponse::Done {
        message: message.into(),
    }
}

/// `edge` or `tag:edge` → `tag:edge`.
pub fn normalize_tag(tag: &str) -> Result<String, String> {
    let name = tag.strip_prefix("tag:").unwrap_or(tag);
    if is_dns_label(name) {
        Ok(format!("tag:{name}"))
    } else {
        Err(format!(
            "invalid tag {tag:?}: use letters a-z, digits and '-', like --tag edge"
        ))
    }
}

fn key_info(k: &AuthKeyRecord) -> AuthKeyInfo {
    AuthKeyInfo {
        id: k.id.to_string(),
        created: k.created,
        expires: k.expires,
        reusable: k.reusable,
        ephemeral: k.ephemeral,
        tags: k.tags.clone(),
        uses: k.uses,
        revoked: k.revoked,
    }
}

pub(crate) fn handle(svc: &mut Service, req: AdminRequest) -> AdminResponse {
    match run(svc, req) {
        Ok(r) => r,
        Err(message) => error(message),
    }
}

fn run(svc: &mut Service, req: AdminRequest) -> Result<AdminResponse, String> {
    let unix = unix_now();
    let now = Instant::now();
    match req {
        AdminRequest::AuthkeyCreate {
            reusable,
            ephemeral,
            expires_in_secs,
            tags,
        } => {
            if expires_in_secs == 0 || expires_in_secs > MAX_AUTHKEY_LIFETIME.as_secs() {
                return Err("an auth key must expire after more than 0s and at most 365d".into());
            }
            let mut tags = tags
                .iter()
                .map(|t| normalize_tag(t))
                .collect::<Result<Vec<_>, _>>()?;
            tags.sort();
            tags.dedup();
            let token = AuthKeyToken::generate();
            let rec = AuthKeyRecord {
                id: token.id().clone(),
                secret_hash: token.secret_hash(),
                created: unix,
                expires: unix + expires_in_secs,
                reusable,
                ephemeral,
                tags,
                uses: 0,
                revoked: false,
            };
            svc.store.insert_authkey(&rec).map_err(|e| e.to_string())?;
            info!(id = %rec.id, reusable, ephemeral, "auth key created");
            Ok(AdminResponse::AuthkeyCreated {
                key: token.reveal().to_string(),
                info: key_info(&rec),
            })
        }
        AdminRequest::AuthkeyList => {
            let keys = svc.store.authkeys().map_err(|e| e.to_string())?;
            Ok(AdminResponse::Authkeys {
                keys: keys.iter().map(key_info).collect(),
            })
        }
        AdminRequest::AuthkeyRevoke { id } => {
            let id = parse_key_id(&id)?;
            if svc.store.revoke_authkey(&id).map_err(|e| e.to_string())? {
                info!(%id, "auth key revoked");
                Ok(done(format!("auth key {id} revoked")))
            } else {
                Err(format!("no auth key with id {id}"))
            }
        }
        AdminRequest::NodesList => {
            let nodes = svc
                .mesh
                .list()
                .map(|(rec, view, last_seen, expired)| NodeInfo {
                    node: view.clone(),
                    created: rec.created,
                    last_seen,
                    ephemeral: rec.ephemeral,
                    expired,
                })
                .collect();
            Ok(AdminResponse::Nodes { nodes })
        }
        AdminRequest::NodesRemove { node } => {
            let id = svc
                .mesh
                .find(&node)
                .ok_or_else(|| format!("no node with id or name {node:?}"))?;
            svc.store.delete_node(id).map_err(|e| e.to_string())?;
            svc.mesh.remove_node(id, now);
            info!(node = %id, "node removed by admin");
            Ok(done(format!("node {node} removed")))
        }
        AdminRequest::NodesExpire { node } => {
            let id = svc
                .mesh
                .find(&node)
                .ok_or_else(|| format!("no node with id or name {node:?}"))?;
            svc.store
                .set_key_expiry(id, unix)
                .map_err(|e| e.to_string())?;
            svc.mesh.set_key_expiry(id, unix, now, unix);
            info!(node = %id, "node key expired by admin");
            Ok(done(format!(
                "node {node} expired: its peers drop it; it must register again with an auth key"
            )))
        }
        AdminRequest::PolicyGet => Ok(AdminResponse::Policy {
            policy: svc
                .policy_text
                .clone()
                .unwrap_or_else(|| svc.mesh.policy().to_json_pretty()),
        }),
        AdminRequest::PolicySet { policy } => {
            let parsed = Policy::parse(&policy).map_err(|e| e.to_string())?;
            svc.store
                .set_policy(&policy, unix)
                .map_err(|e| e.to_string())?;
            svc.mesh.set_policy(parsed, now);
            svc.policy_text = Some(policy);
            info!("policy updated");
            Ok(done("policy updated"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_normalize() {
        assert_eq!(normalize_tag("edge").unwrap(), "tag:edge");
        assert_eq!(normalize_tag("tag:edge").unwrap(), "tag:edge");
        assert!(normalize_tag("Edge Box").is_err());
        assert!(normalize_tag("tag:").is_err());
    }
}
