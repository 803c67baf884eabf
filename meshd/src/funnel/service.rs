//! Opening and closing funnels for the local API: asks the coordinator (which checks the policy's
//! grant), then records the funnel in the node's own table, which the ingress trusts. Background
//! funnels are saved in the state dir and come back after a restart until their TTL.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use proto::api::FunnelRequest;
use tokio::sync::watch;
use tracing::{info, warn};

use super::ingress::unix_now;
use super::table::{FunnelTable, LocalFunnel};
use crate::control::ControlClient;
use crate::daemon::state::StateDir;

#[derive(Debug, Clone)]
pub struct FunnelService {
    client: Arc<ControlClient>,
    state: StateDir,
    table: Arc<Mutex<FunnelTable>>,
    /// Told after every change of `table` (the ingress ends streams of closed funnels).
    changed: watch::Sender<()>,
}

impl FunnelService {
    /// Restores the saved background funnels that are still live.
    pub fn new(client: Arc<ControlClient>, state: StateDir) -> Self {
        let saved = state.funnels().unwrap_or_else(|e| {
            warn!("saved funnels: {e:#}");
            vec![]
        });
        let table = FunnelTable::restore(saved, unix_now());
        Self {
            client,
            state,
            table: Arc::new(Mutex::new(table)),
            changed: watch::Sender::new(()),
        }
    }

    /// The table the ingress decides with.
    pub fn table(&self) -> Arc<Mutex<FunnelTable>> {
        self.table.clone()
    }

    /// Changes after every change of the table.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    pub async fn open(
        &self,
        port: u16,
        name: Option<String>,
        ttl_secs: Option<u64>,
        background: bool,
    ) -> Result<LocalFunnel, String> {
        let req = FunnelRequest {
            name,
            port,
            ttl_secs,
        };
        let resp = self
            .client
            .funnel_open(&req)
            .await
            .map_err(|e| e.to_string())?;
        let f = LocalFunnel {
            name: resp.route.name,
            port,
            url: resp.url,
            expires: resp.route.expires,
            background,
        };
        info!(name = %f.name, port, url = %f.url, background, "funnel open");
        self.with_table(|t| t.upsert(f.clone()));
        Ok(f)
    }

    /// Closes the named funnel, or every funnel of this node; returns the names closed.
    pub async fn close(&self, name: Option<&str>) -> Result<Vec<String>, String> {
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_owned()],
            None => self.list().into_iter().map(|f| f.name).collect(),
        };
        if let Some(n) = name {
            if !self.list().iter().any(|f| f.name == n) {
                return Err(format!("this node has no funnel named {n:?}"));
            }
        }
        // The node stops serving first: whatever the coordinator says, the funnel is closed here.
        self.with_table(|t| {
            for n in &names {
                t.remove(n);
            }
        });
        for n in &names {
            info!(name = %n, "funnel closed");
            if let Err(e) = self.client.funnel_close(n).await {
                if !e.to_string().contains("funnel_not_found") {
                    return Err(format!(
                        "closed on this node, but the coordinator did not confirm: {e}"
                    ));
                }
            }
        }
        Ok(names)
    }

    pub fn list(&self) -> Vec<LocalFunnel> {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list()
    }

    /// Follows the coordinator's record of this node's routes ([`FunnelTable::follow`]): a
    /// funnel it shortened or closed (an admin, a new policy) ends here too, and the ingress
    /// ends its open streams.
    pub fn follow_routes(&self, me: proto::NodeId, routes: &[proto::map::FunnelRoute]) {
        let mine = routes
            .iter()
            .filter(|r| r.node == me)
            .map(|r| (r.name.clone(), r.expires))
            .collect();
        let (gone, changed) = self
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .follow(&mine);
        for f in &gone {
            info!(name = %f.name, "funnel closed by the coordinator");
        }
        if changed {
            self.changed.send_replace(());
            self.save();
        }
    }

    /// Drops expired funnels every second (the coordinator removes their routes on its own).
    pub async fn expire_forever(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let gone = self
                .table
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .expire(unix_now());
            for f in &gone {
                info!(name = %f.name, "funnel expired");
            }
            if !gone.is_empty() {
                self.changed.send_replace(());
            }
            if gone.iter().any(|f| f.background) {
                self.save();
            }
        }
    }

    fn with_table(&self, f: impl FnOnce(&mut FunnelTable)) {
        f(&mut self.table.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.send_replace(());
        self.save();
    }

    fn save(&self) {
        let saved = self
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saved();
        if let Err(e) = self.state.save_funnels(&saved) {
            warn!("saving funnels: {e:#}");
        }
    }
}
