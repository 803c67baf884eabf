//! The node's state dir: `node.key` (the WireGuard private key), `node.json` (who we are and
//! which coordinator we belong to) and `netmap.json` (the last netmap, so the node comes up with
//! the control plane down). Everything 0600, written atomically; the dir is 0700.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::funnel::table::LocalFunnel;
use anyhow::Context as _;
use keys::keyfile;
use keys::PrivateKey;
use proto::map::Netmap;
use proto::Node;
use serde::{Deserialize, Serialize};

/// What `node.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// The coordinator this node registered with.
    pub coord_url: String,
    /// How the coordinator's certificate is trusted: a pinned fingerprint or a CA file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coord_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coord_ca: Option<PathBuf>,
    pub node: Node,
}

#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating 0700) the state dir.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting permissions of {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The node key, generated on first use.
    pub fn node_key(&self) -> anyhow::Result<PrivateKey> {
        let path = self.dir.join("node.key");
        if path.exists() {
            return Ok(keyfile::load_private_key(&path)?);
        }
        let key = PrivateKey::generate();
        keyfile::save_private_key(&path, &key)?;
        Ok(key)
    }

    pub fn identity(&self) -> anyhow::Result<Option<Identity>> {
        self.read_json("node.json")
    }

    pub fn save_identity(&self, id: &Identity) -> anyhow::Result<()> {
        self.write_json("node.json", id)
    }

    pub fn netmap(&self) -> anyhow::Result<Option<Netmap>> {
        self.read_json("netmap.json")
    }

    pub fn save_netmap(&self, map: &Netmap) -> anyhow::Result<()> {
        self.write_json("netmap.json", map)
    }

    /// The background funnels (`meshd funnel --bg`), which outlive a restart until their TTL.
    pub fn funnels(&self) -> anyhow::Result<Vec<LocalFunnel>> {
        Ok(self.read_json("funnels.json")?.unwrap_or_default())
    }

    pub fn save_funnels(&self, funnels: &[LocalFunnel]) -> anyhow::Result<()> {
        self.write_json("funnels.json", &funnels)
    }

    /// Forgets the identity (`meshd logout`): key, identity, netmap and funnels.
    pub fn wipe(&self) -> anyhow::Result<()> {
        for f in ["node.key", "node.json", "netmap.json", "funnels.json"] {
            match std::fs::remove_file(self.dir.join(f)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("removing {f}")),
            }
        }
        Ok(())
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> anyhow::Result<Option<T>> {
        let path = self.dir.join(name);
        if !path.exists() {
            return Ok(None);
        }
        let bytes = keyfile::read_private(&path)?;
        let v = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is damaged: remove it to start over", path.display()))?;
        Ok(Some(v))
    }

    fn write_json<T: Serialize>(&self, name: &str, v: &T) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec_pretty(v)?;
        keyfile::write_private(&self.dir.join(name), &bytes)?;
        Ok(())
    }
}
