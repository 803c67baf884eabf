//! The proxy test bench: a local HTTP service, the real node ingress in front of it, and the
//! edge proxy on 127.0.0.1, all on ports picked by the OS.

#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use funnel_edge::certs::{Gated, IssueLimit, LocalCa};
use funnel_edge::dial::{BoxFuture, Dialer, Io, TcpDialer};
use funnel_edge::proxy::{serve, ProxyOptions};
use funnel_edge::routes::RouteTable;
use funnel_edge::tls::server_config;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use meshd::funnel::ingress::Ingress;
use meshd::funnel::table::{FunnelTable, LocalFunnel};
use proto::map::{DnsConfig, FunnelRoute, Netmap, FUNNEL_INGRESS_PORT};
use proto::{Node, NodeId};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use testkit::{binary, run, spawn_lines, stdout_of, Proc};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub mod checks;

pub const DOMAIN: &str = "funnel.localhost";
/// Every name a test asks curl for.
const NAMES: [&str; 9] = [
    "hello", "second", "nofunnel", "down", "slow", "old", "nosuch", "other", "brief",
];

type SBody = BoxBody<Bytes, Infallible>;

/// What the local service records and waits on.
#[derive(Debug, Default)]
struct Service {
    /// Most body frames one upload arrived in.
    max_frames: AtomicUsize,
    /// The SSE handler sends its second event when notified.
    sse_go: Arc<Notify>,
    /// Requests to `/gather/K` so far; each is answered once K have arrived.
    gathered: watch::Sender<usize>,
}

pub struct Edge {
    /// The whole topology as child processes ([`Edge::start_mesh`]); `None` for the in-process
    /// bench.
    pub mesh: Option<Mesh>,
    pub dir: TempDir,
    pub port: u16,
    pub ca_path: PathBuf,
    pub ca_pem: String,
    pub sse_go: Arc<Notify>,
    service: Arc<Service>,
    dialed: Arc<Mutex<Vec<SocketAddr>>>,
    /// Bytes written towards nodes (`None` for the mesh topology, where nothing counts them).
    sent_to_nodes: Option<Arc<AtomicU64>>,
    routes: watch::Sender<RouteTable>,
}

/// Maps mesh addresses to where the test's "nodes" really are: `Some(addr)` dials `addr` with
/// the real `TcpDialer`, `None` never answers. Unmapped addresses are refused.
#[derive(Debug)]
struct MapDialer {
    map: HashMap<IpAddr, Option<SocketAddr>>,
    dialed: Arc<Mutex<Vec<SocketAddr>>>,
    /// Bytes the edge wrote to its streams to nodes.
    sent: Arc<AtomicU64>,
}

impl Dialer for MapDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn Io>>> {
        self.dialed.lock().unwrap().push(addr);
        let target = self.map.get(&addr.ip()).copied();
        let sent = self.sent.clone();
        Box::pin(async move {
            match target {
                Some(Some(real)) if addr.port() == FUNNEL_INGRESS_PORT => {
                    let inner = TcpDialer.dial(real).await?;
                    Ok(Box::new(Counted { inner, sent }) as Box<dyn Io>)
                }
                Some(None) => std::future::pending().await,
                _ => Err(io::Error::new(io::ErrorKind::ConnectionRefused, "unmapped")),
            }
        })
    }
}

/// A stream that counts the bytes written to it.
struct Counted {
    inner: Box<dyn Io>,
    sent: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn now() -> u64 {
    meshd::funnel::ingress::unix_now()
}

fn node(id: u8) -> Node {
    Node {
        id: NodeId(u64::from(id)),
        name: format!("n{id}"),
        fqdn: format!("n{id}.mesh.internal"),
        public_key: keys::PublicKey::from_bytes([id; 32]),
        ipv4: Ipv4Addr::new(100, 64, 0, id),
        ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(id)),
        tags: vec![],
        endpoints: vec![],
        online: true,
        key_expiry: now() + 86_400,
    }
}

fn route(name: &str, node: u64, expires: u64) -> FunnelRoute {
    FunnelRoute {
        name: name.into(),
        node: NodeId(node),
        port: 3000,
        expires,
    }
}

fn netmap(routes: Vec<FunnelRoute>) -> Netmap {
    Netmap {
        self_node: node(9),
        peers: vec![node(1), node(2), node(3)],
        dns: DnsConfig {
            domain: "mesh.internal".into(),
            magic_dns: true,
        },
        packet_filter: vec![],
        funnel_routes: routes,
    }
}

/// The routes every test starts with: node 1 is the real ingress (funnels "hello" and "second"),
/// node 2 refuses connections, node 3 never answers.
pub fn default_routes() -> Vec<FunnelRoute> {
    let live = now() + 3600;
    vec![
        route("hello", 1, live),
        route("second", 1, live),
        route("nofunnel", 1, live),
        route("down", 2, live),
        route("slow", 3, live),
        route("old", 1, now() - 10),
    ]
}

impl Edge {
    pub async fn start() -> Self {
        Self::start_with(ProxyOptions::default()).await
    }

    /// An edge with `opts`, except that dialing gives up after a second.
    pub async fn start_with(opts: ProxyOptions) -> Self {
        let service = Arc::new(Service::default());
        let svc_port = start_service(service.clone()).await;
        let second_port = start_service(service.clone()).await;
        let ingress_port = start_ingress(svc_port, second_port).await;
        let closed = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            l.local_addr().unwrap()
        };

        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(LocalCa::open(&dir.path().join("edge"), DOMAIN).unwrap());
        let ca_pem = ca.ca_pem().to_owned();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, &ca_pem).unwrap();

        let table = RouteTable::from_netmap(DOMAIN, &netmap(default_routes()), now()).unwrap();
        let (routes, rx) = watch::channel(table);
        let gated = Gated::new(ca, rx.clone(), IssueLimit::default());
        let tls = server_config(Arc::new(gated));

        let dialed = Arc::new(Mutex::new(Vec::new()));
        let sent_to_nodes = Arc::new(AtomicU64::new(0));
        let ingress = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ingress_port);
        let dialer = MapDialer {
            map: HashMap::from([
                (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), Some(ingress)),
                (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)), Some(closed)),
                (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 3)), None),
            ]),
            dialed: dialed.clone(),
            sent: sent_to_nodes.clone(),
        };
        let opts = ProxyOptions {
            dial_timeout: Duration::from_secs(1),
            ..opts
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(serve(listener, tls, rx, Arc::new(dialer), opts));

        Self {
            mesh: None,
            dir,
            port,
            ca_path,
            ca_pem,
            sse_go: service.sse_go.clone(),
            service,
            dialed,
            sent_to_nodes: Some(sent_to_nodes),
            routes,
        }
    }

    /// The one-machine topology with real processes: `coord`, `funnel-edge run` (userspace) on
    /// 127.0.0.1 and a `meshd up --userspace` node "laptop" that publishes the local service as
    /// funnel "hello" (`meshd funnel PORT --bg --name hello`). Returns once a request gets
    /// through.
    pub async fn start_mesh() -> Self {
        let service = Arc::new(Service::default());
        let svc_port = start_service(service.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let port = {
            let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let mesh = Mesh::start(dir.path(), port, svc_port);
        let ca_path = dir.path().join("edge").join("ca.pem");
        let ca_pem = std::fs::read_to_string(&ca_path).unwrap();
        let (routes, _) = watch::channel(RouteTable::new(DOMAIN).unwrap());
        let edge = Self {
            mesh: Some(mesh),
            dir,
            port,
            ca_path,
            ca_pem,
            sse_go: service.sse_go.clone(),
            service,
            dialed: Arc::default(),
            sent_to_nodes: None,
            routes,
        };
        // The first request waits for the netmap and the edge's handshake with the node.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = curl(&edge, &[&edge.url("hello", "/hello")]).await;
            if out.status == 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the funnel never answered: {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        edge
    }

    pub fn url(&self, name: &str, path: &str) -> String {
        format!("https://{name}.{DOMAIN}:{}{path}", self.port)
    }

    pub fn dialed(&self) -> Vec<SocketAddr> {
        self.dialed.lock().unwrap().clone()
    }

    /// Requests to `/gather/K` the service has had so far.
    pub fn gathered(&self) -> usize {
        *self.service.gathered.borrow()
    }

    /// Bytes the edge has written to nodes so far, where they are counted.
    pub fn bytes_to_nodes(&self) -> Option<u64> {
        self.sent_to_nodes
            .as_ref()
            .map(|n| n.load(Ordering::Relaxed))
    }

    pub fn max_frames_seen(&self) -> usize {
        self.service.max_frames.load(Ordering::SeqCst)
    }

    pub fn set_routes(&self, routes: Vec<FunnelRoute>) {
        let nm = netmap(routes);
        self.routes.send_modify(|t| t.update(&nm, now()));
    }

    /// `curl` trusting only the edge CA, with every test name resolving to 127.0.0.1.
    pub fn curl_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.arg("--cacert").arg(&self.ca_path);
        for name in NAMES {
            cmd.arg("--resolve")
                .arg(format!("{name}.{DOMAIN}:{}:127.0.0.1", self.port));
        }
        cmd.args(["--max-time", "60"]).args(args).kill_on_drop(true);
        cmd
    }

    /// A TLS connection to the edge trusting only its CA.
    pub async fn tls_client(&self, name: &str, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port))
            .await
            .unwrap();
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await
            .unwrap()
    }
}

#[derive(Debug)]
pub struct CurlOut {
    /// curl's own exit code (0: the transfer completed).
    pub exit: Option<i32>,
    pub status: u16,
    pub version: String,
    pub body: String,
    pub stderr: String,
}

/// Runs curl (`-sS`) and splits off the status line it is told to print last.
pub async fn curl(edge: &Edge, args: &[&str]) -> CurlOut {
    let out = edge
        .curl_command(&["-sS", "-w", "\n%{http_version} %{http_code}"])
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let (version, status) = last.split_once(' ').unwrap_or(("", "0"));
    CurlOut {
        exit: out.status.code(),
        status: status.trim().parse().unwrap_or(0),
        version: version.to_owned(),
        body: body.to_owned(),
        stderr,
    }
}

/// The node's ingress on 127.0.0.1, publishing funnel "hello" → the service and "second" → a
/// second instance of it. The edge is whoever connects from 127.0.0.1.
async fn start_ingress(svc_port: u16, second_port: u16) -> u16 {
    let mut table = FunnelTable::default();
    for (name, port) in [("hello", svc_port), ("second", second_port)] {
        table.upsert(LocalFunnel {
            name: name.into(),
            port,
            url: String::new(),
            expires: now() + 3600,
            background: false,
        });
    }
    let ingress = Ingress {
        funnels: Arc::new(Mutex::new(table)),
        changes: tokio::sync::watch::channel(()).1,
        is_edge: Arc::new(|ip| ip == IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, peer)) = l.accept().await {
            let ingress = ingress.clone();
            tokio::spawn(async move {
                let _ = ingress.handle(s, peer.ip()).await;
            });
        }
    });
    port
}

/// A new reusable auth key from the coordinator in `coord_state`, tagged `tag`.
fn authkey(coord_state: &std::path::Path, tag: Option<&str>) -> String {
    let mut cmd = std::process::Command::new(binary("coord"));
    cmd.arg("--state-dir")
        .arg(coord_state)
        .args(["authkey", "create", "--reusable"]);
    if let Some(t) = tag {
        cmd.args(["--tag", t]);
    }
    stdout_of(&mut cmd).trim().to_owned()
}

/// The local HTTP/1.1 service behind the funnel.
async fn start_service(state: Arc<Service>) -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(state.clone(), port, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    port
}

fn full(s: impl Into<Bytes>) -> SBody {
    Full::new(s.into()).boxed()
}

async fn handle(
    state: Arc<Service>,
    port: u16,
    req: Request<Incoming>,
) -> Result<Response<SBody>, Infallible> {
    let resp = match req.uri().path() {
        "/hello" => Response::new(full("hello from the service\n")),
        // Refuses whatever comes, without reading it.
        "/refuse" => Response::builder()
            .status(413)
            .body(full("too large for this service\n"))
            .unwrap(),
        // Which instance of the service answered.
        "/port" => Response::new(full(format!("{port}\n"))),
        // The service closes its connection after this answer.
        "/close" => Response::builder()
            .header("connection", "close")
            .body(full("closing\n"))
            .unwrap(),
        "/headers" => {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            Response::new(full(out))
        }
        "/upload" => {
            let mut body = req.into_body();
            let (mut hash, mut len, mut frames) = (Sha256::new(), 0usize, 0usize);
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(Response::builder().status(500).body(full("")).unwrap());
                };
                if let Some(d) = frame.data_ref() {
                    hash.update(d);
                    len += d.len();
                    frames += 1;
                }
            }
            state.max_frames.fetch_max(frames, Ordering::SeqCst);
            Response::new(full(format!("{} {len}\n", hex::encode(hash.finalize()))))
        }
        "/sse" => {
            let go = state.sse_go.clone();
            let events = futures_util::stream::unfold(0u8, move |step| {
                let go = go.clone();
                async move {
                    let data = match step {
                        0 => "data: first\n\n",
                        1 => {
                            go.notified().await;
                            "data: second\n\n"
                        }
                        _ => return None,
                    };
                    Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(data))),
                        step + 1,
                    ))
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(BodyExt::boxed(StreamBody::new(events)))
                .unwrap()
        }
        "/ws" => websocket(req),
        path if path.starts_with("/gather/") => gather(&state, &path["/gather/".len()..]).await,
        _ => Response::builder().status(404).body(full("")).unwrap(),
    };
    Ok(resp)
}

/// Holds the request until the service has had `until` of them (counted since it started), so
/// that many are open at once; 504 if they do not come within 10 s.
async fn gather(state: &Service, until: &str) -> Response<SBody> {
    let Ok(until) = until.parse::<usize>() else {
        return Response::builder().status(400).body(full("")).unwrap();
    };
    let mut count = state.gathered.subscribe();
    state.gathered.send_modify(|n| *n += 1);
    let all = tokio::time::timeout(Duration::from_secs(10), count.wait_for(|n| *n >= until))
        .await
        .is_ok_and(|r| r.is_ok());
    if all {
        Response::new(full("gathered\n"))
    } else {
        Response::builder().status(504).body(full("")).unwrap()
    }
}

/// Accepts a WebSocket upgrade and echoes every data message.
fn websocket(mut req: Request<Incoming>) -> Response<SBody> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return Response::builder().status(400).body(full("")).unwrap();
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        while let Some(Ok(msg)) = ws.next().await {
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(101)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
        .body(full(""))
        .unwrap()
}

/// How long each process of [`Mesh`] may take to print that it is ready.
const SPAWN_WITHIN: Duration = Duration::from_secs(60);

/// The processes of [`Edge::start_mesh`].
pub struct Mesh {
    pub coord_state: PathBuf,
    /// Where the coordinator is and its certificate's fingerprint, as nodes are told.
    pub coord_url: String,
    pub coord_fingerprint: String,
    pub node_state: PathBuf,
    /// The local service's port (the funnel's).
    pub svc_port: u16,
    _children: Vec<Proc>,
}

impl Mesh {
    fn start(dir: &std::path::Path, https_port: u16, svc_port: u16) -> Self {
        let coord = binary("coord");
        let coord_state = dir.join("coord");
        let cs = coord_state.to_str().unwrap().to_owned();
        let mut cmd = std::process::Command::new(&coord);
        cmd.args(["--state-dir", &cs, "serve", "--listen", "127.0.0.1:0"])
            .args([
                "--funnel-domain",
                DOMAIN,
                "--funnel-port",
                &https_port.to_string(),
            ])
            .env("COORD_LOG", "warn");
        let (coord_proc, lines) = spawn_lines(
            cmd,
            &["coord listening on ", "TLS certificate fingerprint: "],
            SPAWN_WITHIN,
        );
        let (url, fingerprint) = (lines[0].clone(), lines[1].clone());
        let policy = format!(
            r#"{{"acls": [{{"src": ["*"], "dst": ["*"]}}],
                "funnel": [{{"nodes": ["laptop"], "ports": [{svc_port}], "max_ttl": "1h"}}],
                "edges": [{{"tag": "tag:edge"}}]}}"#
        );
        let policy_file = dir.join("policy.json");
        std::fs::write(&policy_file, policy).unwrap();
        let (ok, out) = run(
            &coord,
            &[
                "--state-dir",
                &cs,
                "policy",
                "set",
                policy_file.to_str().unwrap(),
            ],
        );
        assert!(ok, "{out}");
        let (edge_key, node_key) = (
            authkey(&coord_state, Some("edge")),
            authkey(&coord_state, None),
        );

        // How each process first reaches the coordinator.
        let join = |key: &str| {
            let trust = ["--coord", &url, "--coord-fingerprint", &fingerprint];
            trust
                .map(str::to_owned)
                .into_iter()
                .chain(["--authkey".into(), key.to_owned()])
        };
        let edge_state = dir.join("edge");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_funnel-edge"));
        // Userspace mode by default: no `--userspace`, and no TUN device made (checked below).
        cmd.args(["run", "--state-dir", edge_state.to_str().unwrap()])
            .args([
                "--domain",
                DOMAIN,
                "--https-listen",
                &format!("127.0.0.1:{https_port}"),
            ])
            .args(["--public-address", "127.0.0.1", "--listen-port", "0"])
            .args(join(&edge_key))
            // Errors only: until the node reports its endpoint the edge warns that no peer has one.
            .env("FUNNEL_EDGE_LOG", "error")
            .env("MESHD_LOG", "error");
        let (edge_proc, _) = spawn_lines(cmd, &["funnel-edge: serving"], SPAWN_WITHIN);
        assert!(
            !std::path::Path::new("/sys/class/net/edge0").exists(),
            "the edge made a TUN device without --tun"
        );

        let node_state = dir.join("node");
        let ns = node_state.to_str().unwrap().to_owned();
        let mut cmd = std::process::Command::new(binary("meshd"));
        cmd.args([
            "--state-dir",
            &ns,
            "up",
            "--userspace",
            "--hostname",
            "laptop",
        ])
        .args([
            "--listen-port",
            "0",
            "--socks5",
            "127.0.0.1:0",
            "--endpoint",
            "127.0.0.1",
        ])
        .args(join(&node_key))
        .env("MESHD_LOG", "warn");
        let (node_proc, _) = spawn_lines(cmd, &["meshd up: "], SPAWN_WITHIN);
        let (ok, out) = run(
            binary("meshd"),
            &[
                "--state-dir",
                &ns,
                "funnel",
                &svc_port.to_string(),
                "--bg",
                "--name",
                "hello",
            ],
        );
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("https://hello.{DOMAIN}:{https_port}/")),
            "{out}"
        );
        Mesh {
            coord_state,
            coord_url: url,
            coord_fingerprint: fingerprint,
            node_state,
            svc_port,
            _children: vec![node_proc, edge_proc, coord_proc],
        }
    }

    /// Runs `meshd` with the laptop's state dir.
    pub fn meshd(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["--state-dir", self.node_state.to_str().unwrap()];
        all.extend_from_slice(args);
        run(binary("meshd"), &all)
    }

    /// A new reusable auth key from the coordinator, tagged `tag`.
    pub fn authkey(&self, tag: Option<&str>) -> String {
        authkey(&self.coord_state, tag)
    }

    /// Runs `coord` with the coordinator's state dir (its admin socket).
    pub fn coord(&self, args: &[&str]) -> (bool, String) {
        let mut all = vec!["--state-dir", self.coord_state.to_str().unwrap()];
        all.extend_from_slice(args);
        run(binary("coord"), &all)
    }
}
