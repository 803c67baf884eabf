//! Admin commands, run on the mesh thread: auth keys, nodes, policy.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use keys::authkey::AuthKeyToken;
use keys::PublicKey;
use proto::admin::{AdminRequest, AdminResponse, AuthKeyInfo, FunnelInfo, NodeInfo};
use proto::policy::{is_dns_label, Policy};
use proto::Node;
use tracing::info;

use crate::http::funnels::funnel_url;
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
        AdminRequest::NodesAddExternal { name, public_key } => {
            add_external(svc, &name, &public_key, now, unix)
        }
        AdminRequest::FunnelsList => {
            let cfg = svc.mesh.config();
            let funnels = svc
                .mesh
                .all_funnels()
                .map(|r| FunnelInfo {
                    node_name: svc.mesh.node_name(r.node).unwrap_or_default(),
                    url: funnel_url(&r.name, &cfg.funnel_domain, cfg.funnel_port),
                    route: r.clone(),
                })
                .collect();
            Ok(AdminResponse::Funnels { funnels })
        }
        AdminRequest::FunnelsClose { name } => {
            if svc.mesh.funnel(&name).is_none() {
                return Err(format!("no live funnel named {name:?}"));
            }
            svc.store
                .delete_funnels(std::slice::from_ref(&name))
                .map_err(|e| e.to_string())?;
            svc.mesh.remove_funnel(&name, now);
            info!(name, "funnel closed by an admin");
            Ok(done(format!(
                "funnel {name} closed: the edges stop serving it and its node drops it"
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
            svc.mesh.set_policy(parsed, now, unix);
            svc.policy_text = Some(policy);
            info!("policy updated");
            Ok(done("policy updated"))
        }
    }
}

/// `coord nodes add-external`: a device with a stock WireGuard client joins with a key pair
/// generated elsewhere. It gets addresses like any node and appears in its peers' netmaps; it
/// never holds a map stream, so it shows offline and reports no endpoints (it initiates, and
/// the mesh nodes learn its endpoint by roaming).
fn add_external(
    svc: &mut Service,
    name: &str,
    public_key: &str,
    now: Instant,
    unix: u64,
) -> Result<AdminResponse, String> {
    if !is_dns_label(name) {
        return Err(format!(
            "invalid node name {name:?}: use 1 to 63 letters a-z, digits and '-', like --name phone"
        ));
    }
    let key: PublicKey = public_key.trim().parse().map_err(|e| {
        format!(
            "invalid public key {public_key:?}: {e}; give the device's WireGuard public key \
             (44 base64 characters, as `wg pubkey` prints it)"
        )
    })?;
    if key.as_bytes() == &[0u8; keys::KEY_LEN] {
        return Err("invalid public key: the all-zero key is not a usable WireGuard key".into());
    }
    if let Some((rec, _)) = svc.mesh.node_by_key(&key) {
        return Err(format!(
            "public key {} is already registered as node {} ({}): remove it first with \
             `coord nodes remove {}`",
            key.short(),
            rec.id,
            rec.name,
            rec.name
        ));
    }
    if svc.mesh.list().any(|(rec, ..)| rec.name == name) {
        return Err(format!(
            "a node named {name:?} already exists: pick another --name"
        ));
    }
    let plan = svc
        .mesh
        .plan_node(key, name, vec![], false, None, unix)
        .map_err(|e| e.to_string())?;
    let rec = svc
        .store
        .insert_external_node(&plan)
        .map_err(|e| e.to_string())?;
    let id = rec.id;
    info!(node = %id, name = %rec.name, ipv4 = %rec.ipv4, key = %key.short(), "external node added");
    svc.mesh.insert_node(rec, now, unix);
    let info = svc
        .mesh
        .list()
        .find(|(rec, ..)| rec.id == id)
        .map(|(rec, view, last_seen, expired)| NodeInfo {
            node: view.clone(),
            created: rec.created,
            last_seen,
            ephemeral: rec.ephemeral,
            expired,
        })
        .ok_or("the new node vanished")?;
    let peers = svc.mesh.netmap_for(id).map(|m| m.peers).unwrap_or_default();
    let config = wg_quick_config(&info.node, &peers);
    Ok(AdminResponse::ExternalNodeAdded { node: info, config })
}

/// A wg-quick configuration for `me`: its addresses, and one `[Peer]` per node it may reach or
/// be reached by. The private key stays on the device: the config has a placeholder for it.
pub fn wg_quick_config(me: &Node, peers: &[Node]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# meshfunnel node {} ({})", me.name, me.fqdn);
    let _ = writeln!(s, "[Interface]");
    let _ = writeln!(
        s,
        "# Paste the private key that belongs to public key {}:",
        me.public_key
    );
    let _ = writeln!(s, "PrivateKey = <paste your private key>");
    let _ = writeln!(s, "Address = {}/32, {}/128", me.ipv4, me.ipv6);
    for p in peers {
        let _ = writeln!(s);
        let _ = writeln!(s, "# {} ({})", p.name, p.fqdn);
        let _ = writeln!(s, "[Peer]");
        let _ = writeln!(s, "PublicKey = {}", p.public_key);
        let _ = writeln!(s, "AllowedIPs = {}/32, {}/128", p.ipv4, p.ipv6);
        if let Some(ep) = p.endpoints.first() {
            let _ = writeln!(s, "Endpoint = {ep}");
        }
        let _ = writeln!(s, "PersistentKeepalive = 25");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wg_quick_config_lists_peers_with_endpoints_when_known() {
        let node = |i: u8, name: &str, endpoints: Vec<std::net::SocketAddr>| Node {
            id: proto::NodeId(u64::from(i)),
            name: name.into(),
            fqdn: format!("{name}.mesh.internal"),
            public_key: keys::PrivateKey::from_bytes([i; 32]).public_key(),
            ipv4: std::net::Ipv4Addr::new(100, 64, 0, i),
            ipv6: std::net::Ipv6Addr::new(0xfd00, 1, 2, 0, 0, 0, 0x6440, u16::from(i)),
            tags: vec![],
            endpoints,
            online: false,
            key_expiry: 0,
        };
        let me = node(1, "phone", vec![]);
        let a = node(2, "a", vec!["[2001:db8::2]:41641".parse().unwrap()]);
        let b = node(3, "b", vec![]);
        let text = wg_quick_config(&me, &[a.clone(), b.clone()]);
        assert!(text.contains("[Interface]\n"), "{text}");
        assert!(text.contains("PrivateKey = <paste your private key>\n"));
        assert!(text.contains("Address = 100.64.0.1/32, fd00:1:2::6440:1/128\n"));
        assert_eq!(text.matches("[Peer]").count(), 2);
        assert!(text.contains(&format!(
            "[Peer]\nPublicKey = {}\nAllowedIPs = 100.64.0.2/32, fd00:1:2::6440:2/128\n\
             Endpoint = [2001:db8::2]:41641\nPersistentKeepalive = 25\n",
            a.public_key
        )));
        assert!(text.contains(&format!(
            "[Peer]\nPublicKey = {}\nAllowedIPs = 100.64.0.3/32, fd00:1:2::6440:3/128\n\
             PersistentKeepalive = 25\n",
            b.public_key
        )));
        assert!(!text.contains("DNS"));
    }

    #[test]
    fn tags_normalize() {
        assert_eq!(normalize_tag("edge").unwrap(), "tag:edge");
        assert_eq!(normalize_tag("tag:edge").unwrap(), "tag:edge");
        assert!(normalize_tag("Edge Box").is_err());
        assert!(normalize_tag("tag:").is_err());
    }
}
