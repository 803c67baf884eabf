//! The userspace TCP/IP stack: a smoltcp interface that owns the node's two mesh addresses, its
//! TCP sockets, and the hand-off between those sockets and the tasks that use them.
//!
//! [`StackCore`] is owned by the driver task and never blocks: the driver calls
//! [`StackCore::poll`] after feeding packets into its device, then drains the device's output
//! into the WireGuard core. Applications use the handles in [`super::handle`], which read from
//! and write into a connection's smoltcp socket itself ([`SharedSocket`]): a slow reader closes
//! the TCP window (backpressure). Dropping the writer half sends FIN (half-close); a reset from
//! the peer reaches the reader as an error.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, PollResult, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpCidr};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace};

use super::device::{QueueDevice, RxPacket, Segment};
use super::handle::{
    Command, ConnReader, ConnWake, ConnWriter, Connection, Stack, Wakeup, ACCEPT_QUEUE, BACKLOG,
};
use super::socket::{SharedSocket, SockState};
use crate::packet::Transport;
use crate::FastMap;

/// Per-socket TCP buffers each way; large enough for window scaling to matter on a LAN.
const SOCKET_BUFFER: usize = 256 * 1024;
/// Largest chunk [`ConnReader::recv`] returns.
pub const CHUNK: usize = 16 * 1024;
/// Commands taken per wake-up.
const BATCH: usize = 64;
/// Unacknowledged data (or an unanswered SYN) for this long resets the connection.
const TCP_TIMEOUT: Duration = Duration::from_secs(60);
/// A socket whose application side is gone is aborted after this long if it has not closed.
const ORPHAN_LINGER: Duration = Duration::from_secs(60);
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

#[derive(Debug)]
enum Phase {
    /// Our SYN is out; the caller waits on `reply`.
    Connecting(oneshot::Sender<io::Result<Connection>>),
    /// A SYN to a listening port; handed to the listener once established.
    Accepting(u16),
    Open,
}

#[derive(Debug)]
struct Conn {
    phase: Phase,
    /// How the application side wakes the driver for this connection, once it has one.
    wake: Option<ConnWake>,
    orphaned_at: Option<Instant>,
    finished: bool,
}

impl Conn {
    fn new(phase: Phase) -> Self {
        Self {
            phase,
            wake: None,
            orphaned_at: None,
            finished: false,
        }
    }
}

#[derive(Debug)]
struct Listening {
    accepted: mpsc::Sender<Connection>,
    /// Slots listening on the port; one that takes a SYN becomes a connection being accepted.
    backlog: Vec<SlotId>,
    /// Connections that took a SYN and have not been handed to the listener yet.
    accepting: usize,
}

pub(super) type SlotId = u64;

/// A connection as its packets name it: (the node's end, the peer's end).
type Flow = (SocketAddr, SocketAddr);

/// One TCP socket, in a socket set of its own: smoltcp visits every socket of the set it is
/// given, on every ingress packet and every egress pass, so with one set for all of them a
/// round would cost in proportion to every open connection (idle ones kept for reuse too).
/// Here the driver finds a packet's socket by its flow and runs egress only for sockets that
/// changed or whose timer is due. The socket is shared with its connection's application side,
/// which keeps it (and what it read last) when the driver lets the slot go.
struct Slot {
    sock: Arc<SharedSocket>,
    /// `None` while the socket listens, in a backlog.
    conn: Option<Conn>,
    /// Key in `StackCore::flows`, once the socket has both ends.
    flow: Option<Flow>,
    /// When smoltcp wants the socket polled (retransmission, delayed ACK, ...); key in
    /// `StackCore::timers`.
    due: Option<smoltcp::time::Instant>,
    /// In `StackCore::touched`: egress runs for it this round.
    touched: bool,
    /// The round whose pump looked at it last.
    pumped_in: u64,
}

impl Slot {
    fn new(sock: tcp::Socket<'static>, conn: Option<Conn>) -> Self {
        Self {
            sock: Arc::new(SharedSocket::new(sock)),
            conn,
            flow: None,
            due: None,
            touched: false,
            pumped_in: 0,
        }
    }

    fn state(&self) -> tcp::State {
        self.sock.lock().socket().state()
    }

    /// Marks the slot (`id`) for this round's egress.
    fn touch(&mut self, id: SlotId, touched: &mut Vec<SlotId>) {
        if !self.touched {
            self.touched = true;
            touched.push(id);
        }
    }

    /// The socket's two ends, once it has them.
    fn ends(&self) -> Option<Flow> {
        let mut st = self.sock.lock();
        let s = st.socket();
        Some((s.local_endpoint()?.into(), s.remote_endpoint()?.into()))
    }
}

/// The stack itself, owned by the driver task.
pub struct StackCore {
    iface: Interface,
    /// The packet queues between smoltcp and the WireGuard core.
    pub device: QueueDevice,
    slots: FastMap<SlotId, Slot>,
    next_slot: SlotId,
    flows: FastMap<Flow, SlotId>,
    listeners: HashMap<u16, Listening>,
    timers: BTreeSet<(smoltcp::time::Instant, SlotId)>,
    touched: Vec<SlotId>,
    /// Connections for the next round's pump: their last egress changed the socket's state (a
    /// timeout, say) or finished them.
    carry: Vec<SlotId>,
    /// Connections whose application has gone, pumped every round until they close or their
    /// linger runs out.
    lingering: Vec<SlotId>,
    /// Scratch: the connections one pump looks at.
    work: Vec<SlotId>,
    /// Scratch: the connections whose application woke the driver.
    woken: Vec<SlotId>,
    round: u64,
    /// Sockets the last round ran egress for.
    egressed: usize,
    /// Connections the last round's pump looked at.
    pumped: usize,
    /// No sockets: packets for no socket go through it, so smoltcp answers them (RST to a
    /// closed port, echo replies).
    unmatched: SocketSet<'static>,
    cmds: mpsc::Receiver<Command>,
    wake: Arc<Wakeup>,
    epoch: Instant,
    next_port: u16,
}

impl std::fmt::Debug for StackCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackCore")
            .field("sockets", &self.slots.len())
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl StackCore {
    /// A stack owning `ipv4` (in the mesh's /10) and `ipv6` (in its /48), with the given MTU.
    pub fn new(ipv4: Ipv4Addr, ipv6: Ipv6Addr, mtu: usize, now: Instant) -> (Self, Stack) {
        let mut device = QueueDevice::new(mtu);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        // The prefixes make every mesh address on-link: no gateway, no neighbour discovery.
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddr::V4(ipv4).into(), 10));
            let _ = addrs.push(IpCidr::new(IpAddr::V6(ipv6).into(), 48));
        });
        let (tx, cmds) = mpsc::channel(BATCH);
        let wake = Arc::new(Wakeup::default());
        let core = Self {
            iface,
            device,
            slots: FastMap::default(),
            next_slot: 0,
            flows: FastMap::default(),
            listeners: HashMap::new(),
            timers: BTreeSet::new(),
            touched: Vec::new(),
            carry: Vec::new(),
            lingering: Vec::new(),
            work: Vec::new(),
            woken: Vec::new(),
            round: 0,
            egressed: 0,
            pumped: 0,
            unmatched: SocketSet::new(vec![]),
            cmds,
            wake: wake.clone(),
            epoch: now,
            next_port: *EPHEMERAL.start() + rand::random::<u16>() % 16000,
        };
        (core, Stack { cmds: tx, wake })
    }

    /// Notified whenever an application did something the driver should look at.
    pub fn waker(&self) -> Arc<Wakeup> {
        self.wake.clone()
    }

    fn ts(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// Runs the stack: takes new commands, processes queued packets, moves bytes between sockets
    /// and connections, and queues what is to be sent in `device.tx`.
    pub fn poll(&mut self, now: Instant) {
        let ts = self.ts(now);
        self.round += 1;
        self.iface.poll_maintenance(ts);
        self.commands(now);
        self.ingress(ts);
        self.refill_listeners();
        self.expire_timers(ts);
        self.pump(now);
        self.egress(ts);
    }

    /// How long until the stack's own timers (retransmission, keepalive, ...) need a poll; zero
    /// when connections wait for the next round's pump.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        if !self.carry.is_empty() {
            return Some(Duration::ZERO);
        }
        let ts = self.ts(now);
        let (due, _) = self.timers.first()?;
        Some(Duration::from_micros((*due - ts.min(*due)).total_micros()))
    }

    /// Open TCP sockets (connections and listening backlog).
    pub fn socket_count(&self) -> usize {
        self.slots.len()
    }

    /// Sockets the last [`poll`](Self::poll) ran smoltcp's egress for.
    pub fn egressed(&self) -> usize {
        self.egressed
    }

    /// Connections the last [`poll`](Self::poll) moved bytes and state for (or looked at).
    pub fn pumped(&self) -> usize {
        self.pumped
    }

    fn new_socket() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        );
        // Delayed ACKs (smoltcp's default 10 ms; a full segment of new data is acknowledged at
        // once): in request/response traffic the acknowledgement of an answer rides on the next
        // request instead of costing a datagram of its own each way through the tunnel.
        s.set_nagle_enabled(false);
        // Without congestion control smoltcp sends its whole window at once; a burst that
        // overflows a UDP socket buffer on the way then costs a 1 s retransmission timeout.
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s.set_timeout(Some(TCP_TIMEOUT.into()));
        s
    }

    fn add_slot(&mut self, slot: Slot) -> SlotId {
        let id = self.next_slot;
        self.next_slot += 1;
        self.slots.insert(id, slot);
        id
    }

    fn remove_slot(&mut self, id: SlotId) {
        let Some(slot) = self.slots.remove(&id) else {
            return;
        };
        if let Some(flow) = slot.flow {
            if self.flows.get(&flow) == Some(&id) {
                self.flows.remove(&flow);
            }
        }
        if let Some(due) = slot.due {
            self.timers.remove(&(due, id));
        }
    }

    /// Marks a slot for this round's egress.
    fn touch(slots: &mut FastMap<SlotId, Slot>, touched: &mut Vec<SlotId>, id: SlotId) {
        if let Some(slot) = slots.get_mut(&id) {
            slot.touch(id, touched);
        }
    }

    /// Every queued packet, each to its own socket's set (or to the empty one).
    fn ingress(&mut self, ts: smoltcp::time::Instant) {
        while let Some(packet) = self.device.rx.front() {
            let id = match self.demux(packet) {
                Some(id) => Some(id),
                None => self.listen_for_syn(),
            };
            let found = id.and_then(|id| Some((id, self.slots.get_mut(&id)?)));
            let Some((id, slot)) = found else {
                // Not a TCP segment of a connection: an ICMP error about one, maybe.
                let icmp = self.device.rx.front();
                if let Some(flow) = icmp.and_then(|p| unreachable_flow(p.bytes())) {
                    self.unreachable(flow);
                }
                self.iface
                    .poll_ingress_single(ts, &mut self.device, &mut self.unmatched);
                continue;
            };
            let sent = self.device.tx.len();
            self.iface
                .poll_ingress_single(ts, &mut self.device, &mut slot.sock.lock().set);
            if self.device.tx.len() > sent {
                self.device.answered();
            }
            slot.touch(id, &mut self.touched);
            if slot.conn.is_none() && slot.state() != tcp::State::Listen {
                self.accepting(id);
            }
        }
    }

    /// An ICMP "unreachable" about `flow`: a connection whose SYN is out fails at once with
    /// [`io::ErrorKind::HostUnreachable`], as a kernel's connect does (smoltcp would retry its
    /// SYN until the connection's timeout). Established connections ignore it, as TCP does.
    fn unreachable(&mut self, flow: Flow) {
        let Some(&id) = self.flows.get(&flow) else {
            return;
        };
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(conn) = slot.conn.as_mut() else {
            return;
        };
        if !matches!(conn.phase, Phase::Connecting(_)) {
            return;
        }
        if let Phase::Connecting(reply) = std::mem::replace(&mut conn.phase, Phase::Open) {
            debug!(remote = %flow.1, "connect: host unreachable");
            let _ = reply.send(Err(io::Error::new(
                io::ErrorKind::HostUnreachable,
                format!("no route to {}: no peer of the mesh owns it", flow.1.ip()),
            )));
        }
        slot.sock.lock().socket().abort();
        conn.finished = true;
        Self::touch(&mut self.slots, &mut self.touched, id);
    }

    /// The slot a packet is for: its flow's, or a listening one for a SYN to a port listened on.
    fn demux(&self, packet: &RxPacket) -> Option<SlotId> {
        let Segment {
            ends: flow,
            initial_syn,
        } = packet.segment()?;
        if let Some(id) = self.flows.get(&flow) {
            return Some(*id);
        }
        if !initial_syn {
            return None;
        }
        let l = self.listeners.get(&flow.0.port())?;
        l.backlog.iter().copied().find(|id| {
            self.slots
                .get(id)
                .is_some_and(|s| s.state() == tcp::State::Listen)
        })
    }

    /// For the packet at the front of the queue, a SYN to a listened port whose listening slots
    /// are all taken (a burst): a new listening slot, unless [`ACCEPT_QUEUE`] connections of the
    /// port wait already (then the SYN is refused with RST).
    fn listen_for_syn(&mut self) -> Option<SlotId> {
        let segment = self.device.rx.front()?.segment()?;
        let port = segment.ends.0.port();
        let l = self.listeners.get(&port)?;
        if !segment.initial_syn
            || l.accepting + l.accepted.max_capacity() - l.accepted.capacity() >= ACCEPT_QUEUE
        {
            return None;
        }
        self.add_listening(port)
    }

    /// A new socket listening on `port`, in the port's backlog.
    fn add_listening(&mut self, port: u16) -> Option<SlotId> {
        let mut s = Self::new_socket();
        s.listen(port).ok()?;
        let id = self.add_slot(Slot::new(s, None));
        self.listeners.get_mut(&port)?.backlog.push(id);
        Some(id)
    }

    /// A listening slot took a SYN: it leaves the backlog and is accepted once established.
    fn accepting(&mut self, id: SlotId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(flow) = slot.ends() else {
            return;
        };
        let port = flow.0.port();
        slot.flow = Some(flow);
        slot.conn = Some(Conn::new(Phase::Accepting(port)));
        self.flows.insert(flow, id);
        if let Some(l) = self.listeners.get_mut(&port) {
            l.backlog.retain(|b| *b != id);
            l.accepting += 1;
        }
    }

    /// Touches the slots whose timer is due.
    fn expire_timers(&mut self, ts: smoltcp::time::Instant) {
        while let Some(&(due, id)) = self.timers.first() {
            if due > ts {
                break;
            }
            self.timers.pop_first();
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.due = None;
            }
            Self::touch(&mut self.slots, &mut self.touched, id);
        }
    }

    /// smoltcp's egress for the slots touched this round (packets, due timers, the pump); then
    /// each one's next timer. A connection whose socket changed state here (a timeout) or that
    /// finished goes to the next round's pump.
    fn egress(&mut self, ts: smoltcp::time::Instant) {
        self.egressed = self.touched.len();
        // Taken and given back, so the list keeps its allocation from round to round.
        let mut touched = std::mem::take(&mut self.touched);
        for &id in &touched {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            slot.touched = false;
            let mut st = slot.sock.lock();
            let state = st.socket().state();
            while self.iface.poll_egress(ts, &mut self.device, &mut st.set)
                == PollResult::SocketStateChanged
            {}
            let finished = slot.conn.as_ref().is_some_and(|c| c.finished);
            if slot.conn.is_some() && (finished || st.socket().state() != state) {
                self.carry.push(id);
            }
            let due = self.iface.poll_at(ts, &st.set);
            drop(st);
            if due != slot.due {
                if let Some(old) = slot.due {
                    self.timers.remove(&(old, id));
                }
                if let Some(new) = due {
                    self.timers.insert((new, id));
                }
                slot.due = due;
            }
        }
        touched.clear();
        self.touched = touched;
    }

    fn commands(&mut self, now: Instant) {
        for _ in 0..BATCH {
            let Ok(cmd) = self.cmds.try_recv() else {
                break;
            };
            match cmd {
                Command::Connect { remote, reply } => self.start_connect(remote, reply, now),
                Command::Listen {
                    port,
                    accepted,
                    reply,
                } => {
                    let busy = self
                        .listeners
                        .get(&port)
                        .is_some_and(|l| !l.accepted.is_closed());
                    if busy || port == 0 {
                        let _ = reply.send(Err(io::Error::new(
                            io::ErrorKind::AddrInUse,
                            format!("mesh port {port} is already being listened on"),
                        )));
                        continue;
                    }
                    self.drop_listener(port);
                    self.listeners.insert(
                        port,
                        Listening {
                            accepted,
                            backlog: vec![],
                            accepting: 0,
                        },
                    );
                    debug!(port, "listening on the mesh");
                    let _ = reply.send(Ok(()));
                }
            }
        }
        self.refill_listeners();
    }

    fn free_port(&mut self) -> u16 {
        loop {
            let p = self.next_port;
            self.next_port = if p >= *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                p + 1
            };
            if !self.flows.keys().any(|(local, _)| local.port() == p) {
                return p;
            }
        }
    }

    fn start_connect(
        &mut self,
        remote: SocketAddr,
        reply: oneshot::Sender<io::Result<Connection>>,
        _now: Instant,
    ) {
        let on_mesh = self
            .iface
            .ip_addrs()
            .iter()
            .any(|c| c.contains_addr(&remote.ip().into()));
        if !on_mesh {
            let _ = reply.send(Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("{} is not a mesh address", remote.ip()),
            )));
            return;
        }
        let port = self.free_port();
        let mut sock = Self::new_socket();
        if let Err(e) = sock.connect(self.iface.context(), remote, port) {
            let _ = reply.send(Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("cannot connect to {remote}: {e}"),
            )));
            return;
        }
        trace!(%remote, port, "connecting");
        let mut slot = Slot::new(sock, Some(Conn::new(Phase::Connecting(reply))));
        let flow = slot.ends();
        slot.flow = flow;
        let id = self.add_slot(slot);
        if let Some(flow) = flow {
            self.flows.insert(flow, id);
        }
        Self::touch(&mut self.slots, &mut self.touched, id);
    }

    fn drop_listener(&mut self, port: u16) {
        if let Some(l) = self.listeners.remove(&port) {
            for id in l.backlog {
                self.remove_slot(id);
            }
            debug!(port, "stopped listening on the mesh");
        }
    }

    /// Drops listeners whose application has gone and keeps `BACKLOG` slots listening on every
    /// other port.
    fn refill_listeners(&mut self) {
        let closed: Vec<u16> = self
            .listeners
            .iter()
            .filter(|(_, l)| l.accepted.is_closed())
            .map(|(p, _)| *p)
            .collect();
        for port in closed {
            self.drop_listener(port);
        }
        let short: Vec<(u16, usize)> = self
            .listeners
            .iter()
            .map(|(p, l)| (*p, BACKLOG.saturating_sub(l.backlog.len())))
            .filter(|(_, n)| *n > 0)
            .collect();
        for (port, n) in short {
            for _ in 0..n {
                if self.add_listening(port).is_none() {
                    break;
                }
            }
        }
    }

    /// Moves state between sockets and their application sides, for the connections that may
    /// have something to move: touched this round (packets, a due timer, a new connection, their
    /// application read or wrote), carried from the last round's egress, or lingering. A socket
    /// that changed is touched for egress.
    fn pump(&mut self, now: Instant) {
        let mut woken = std::mem::take(&mut self.woken);
        self.wake.take_ready(&mut woken);
        for id in woken.drain(..) {
            Self::touch(&mut self.slots, &mut self.touched, id);
        }
        self.woken = woken;
        let mut work = std::mem::take(&mut self.work);
        work.extend_from_slice(&self.touched);
        work.append(&mut self.carry);
        self.lingering.retain(|id| self.slots.contains_key(id));
        work.extend_from_slice(&self.lingering);
        self.pumped = 0;
        for id in work.drain(..) {
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            if slot.pumped_in == self.round {
                continue;
            }
            slot.pumped_in = self.round;
            let Some(conn) = slot.conn.as_mut() else {
                continue;
            };
            // Finished in an earlier round: its last segment (an RST after `abort`, say) has
            // been sent since, so the socket can go.
            if conn.finished {
                self.remove_slot(id);
                continue;
            }
            if let Some(w) = &conn.wake {
                w.rearm();
            }
            self.pumped += 1;
            let queues = |sock: &SharedSocket| {
                let mut st = sock.lock();
                let s = st.socket();
                (s.state(), s.send_queue(), s.recv_queue())
            };
            let before = queues(&slot.sock);
            let orphaned = conn.orphaned_at.is_some();
            let accepting = match conn.phase {
                Phase::Accepting(port) => Some(port),
                _ => None,
            };
            if !Self::pump_one(id, &slot.sock, conn, &self.listeners, &self.wake, now) {
                conn.finished = true;
            }
            // Handed to the listener, or gone: no longer waiting for it.
            if let Some(port) = accepting.filter(|_| !matches!(conn.phase, Phase::Accepting(_))) {
                if let Some(l) = self.listeners.get_mut(&port) {
                    l.accepting = l.accepting.saturating_sub(1);
                }
            }
            if !orphaned && conn.orphaned_at.is_some() {
                self.lingering.push(id);
            }
            if before != queues(&slot.sock) || conn.finished {
                slot.touch(id, &mut self.touched);
            }
        }
        self.work = work;
    }

    /// One connection; false when it is finished and its socket can go. A [`Connection`] that
    /// does not reach its application is dropped before the socket is locked again (its halves
    /// lock it as they go).
    fn pump_one(
        id: SlotId,
        sock: &Arc<SharedSocket>,
        conn: &mut Conn,
        listeners: &HashMap<u16, Listening>,
        wake: &Arc<Wakeup>,
        now: Instant,
    ) -> bool {
        use tcp::State;
        let state = sock.lock().socket().state();
        let opened = !matches!(
            state,
            State::Closed | State::Listen | State::SynSent | State::SynReceived
        );
        let abort = || {
            sock.lock().socket().abort();
            false
        };
        match std::mem::replace(&mut conn.phase, Phase::Open) {
            Phase::Connecting(reply) => {
                if state == State::Closed {
                    let _ = reply.send(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "connection refused (or no answer)",
                    )));
                    return false;
                }
                if !opened {
                    if reply.is_closed() {
                        return abort();
                    }
                    conn.phase = Phase::Connecting(reply);
                    return true;
                }
                let c = Self::open(id, sock, conn, wake);
                if let Err(Ok(c)) = reply.send(Ok(c)) {
                    drop(c);
                    return abort();
                }
            }
            Phase::Accepting(port) => {
                if matches!(state, State::Closed | State::Listen) {
                    return false;
                }
                if !opened {
                    conn.phase = Phase::Accepting(port);
                    return true;
                }
                let c = Self::open(id, sock, conn, wake);
                let Some(l) = listeners.get(&port) else {
                    drop(c);
                    return abort();
                };
                if let Err(refused) = l.accepted.try_send(c) {
                    drop(refused);
                    debug!(port, "listener not keeping up: connection reset");
                    return abort();
                }
            }
            Phase::Open => {}
        }
        Self::pump_open(&mut sock.lock(), conn, now)
    }

    fn open(
        id: SlotId,
        sock: &Arc<SharedSocket>,
        conn: &mut Conn,
        wake: &Arc<Wakeup>,
    ) -> Connection {
        let wake = ConnWake::new(id, wake.clone());
        conn.wake = Some(wake.clone());
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        let (local, remote) = {
            let mut st = sock.lock();
            let s = st.socket();
            (s.local_endpoint(), s.remote_endpoint())
        };
        Connection {
            local: local.map_or(unspecified, Into::into),
            remote: remote.map_or(unspecified, Into::into),
            reader: ConnReader {
                sock: sock.clone(),
                wake: wake.clone(),
            },
            writer: ConnWriter {
                sock: sock.clone(),
                wake,
            },
        }
    }

    /// An open connection: the socket's FIN, TIME-WAIT and unread bytes settled; false once the
    /// socket is closed (the application keeps what it has not read), or once the application
    /// has gone and the socket has closed or lingered too long.
    ///
    /// An application that has gone with bytes unread (or before more arrived) gets the socket
    /// reset, as a kernel's would, once what it wrote has been acknowledged: the peer stops
    /// sending then, where a FIN would let it send the rest of its stream (a whole download
    /// whose client left) into a socket nobody reads. Until then the socket lingers, so that an
    /// answer written before the close (to an upload not read) still arrives.
    fn pump_open(st: &mut SockState, conn: &mut Conn, now: Instant) -> bool {
        use tcp::State;
        st.settle();
        let app_gone = st.app_gone();
        let unwanted = st.discarded;
        let sock = st.socket();
        if sock.state() == State::Closed {
            return false;
        }
        if !app_gone {
            return true;
        }
        if sock.state() == State::TimeWait {
            return false;
        }
        if unwanted && sock.send_queue() == 0 {
            sock.abort();
            return false;
        }
        if sock.may_send() {
            sock.close();
        }
        let since = *conn.orphaned_at.get_or_insert(now);
        if now.duration_since(since) > ORPHAN_LINGER {
            sock.abort();
            return false;
        }
        true
    }
}

impl Drop for StackCore {
    /// The driver stopped: every connection's application side sees a reset instead of waiting
    /// for a driver that is gone.
    fn drop(&mut self) {
        for slot in self.slots.values() {
            slot.sock.lock().socket().abort();
        }
    }
}

/// The connection (our end, the peer's end) an ICMP "destination unreachable" reports on, when
/// it quotes one of our TCP segments. "Fragmentation needed" is not a failure to connect.
fn unreachable_flow(p: &[u8]) -> Option<Flow> {
    use crate::packet::{ipproto, Icmp, IcmpMessage};
    let info = crate::packet::parse(p).ok()?;
    let Transport::Icmp(Icmp {
        icmp_type,
        code,
        message: IcmpMessage::Error {
            original: Some(original),
        },
    }) = info.transport
    else {
        return None;
    };
    let unreachable = match info.dst {
        IpAddr::V4(_) => icmp_type == 3 && code != 4,
        IpAddr::V6(_) => icmp_type == 1,
    };
    (unreachable && original.protocol == ipproto::TCP).then(|| {
        (
            SocketAddr::new(original.src, original.src_port),
            SocketAddr::new(original.dst, original.dst_port),
        )
    })
}

#[cfg(test)]
#[path = "stack_tests.rs"]
pub(crate) mod tests;
