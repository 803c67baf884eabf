//! Wires the funnel ingress into a running node: who the edges are (from each netmap), the
//! listener on the node's mesh addresses (on a userspace stack in both modes), and the expiry of
//! the node's own funnels.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, PoisonError, RwLock};

use proto::map::FUNNEL_INGRESS_PORT;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::control_loop::ControlState;
use crate::funnel::edges::edge_addresses;
use crate::funnel::ingress::Ingress;
use crate::funnel::service::FunnelService;
use crate::userspace::handle::Stack;

/// Starts the edge tracking and expiry tasks; returns the ingress to serve.
pub fn ingress(
    funnels: &FunnelService,
    mut control: watch::Receiver<Option<ControlState>>,
) -> Ingress {
    let edges: Arc<RwLock<HashSet<IpAddr>>> = Arc::default();
    let current = edges.clone();
    let service = funnels.clone();
    tokio::spawn(async move {
        loop {
            let set = match &*control.borrow_and_update() {
                Some(ControlState::Netmap(map)) => {
                    service.follow_routes(map.self_node.id, &map.funnel_routes);
                    edge_addresses(map)
                }
                _ => HashSet::new(),
            };
            *current.write().unwrap_or_else(PoisonError::into_inner) = set;
            if control.changed().await.is_err() {
                return;
            }
        }
    });
    tokio::spawn(funnels.clone().expire_forever());
    Ingress {
        funnels: funnels.table(),
        changes: funnels.changes(),
        is_edge: Arc::new(move |ip| {
            edges
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&ip)
        }),
    }
}

/// Listens on the stack: the node's own in userspace mode, the one beside the device in TUN mode
/// (`tun_ingress`).
pub async fn serve_stack(ingress: Ingress, stack: Stack) {
    let mut l = match stack.listen(FUNNEL_INGRESS_PORT).await {
        Ok(l) => l,
        Err(e) => {
            warn!("funnel ingress: {e}");
            return;
        }
    };
    while let Some(conn) = l.accept().await {
        let from = conn.remote.ip();
        let ingress = ingress.clone();
        tokio::spawn(async move {
            let io = crate::userspace::into_io(conn);
            if let Err(e) = ingress.handle(io, from).await {
                debug!(%from, "funnel ingress: {e}");
            }
        });
    }
}
