#!/usr/bin/env bash
# Data-plane benchmark: iperf3 TCP throughput and ping RTT between two network namespaces,
# over the raw veth (ceiling) and through meshd (TUN mode), wireguard-go and boringtun-cli.
#
# Every path gets a freshly built topology: two namespaces A and B joined by one veth pair,
# A = 198.51.100.1/24, B = 198.51.100.2/24 (underlay). iperf3 server and ping target are in B,
# the client in A. Nothing leaves the namespaces this script creates.
#
# Usage (as root, from anywhere in the repository):
#   netns-tests/bench/dataplane.sh [options]
# Options:
#   --paths LIST       comma-separated, from veth,meshd,wggo,bt,bt1 (default: all)
#                      bt = boringtun-cli defaults, bt1 = boringtun-cli -t 1
#   --duration S       iperf3 seconds per run (default 10)
#   --rounds N         build every topology N times, report the median (default 1)
#   --pings N          ping count (default 50, interval 0.05 s)
#   --peers100         also measure meshd RSS with 100 peers configured (98 extra
#                      `meshd --userspace` nodes registered to the same coord)
#   --perf S           profile meshd (the sending node) with `perf record` for S seconds during
#                      an extra single-stream run (not the one in the table); 0 = off (default)
#   --bt-cli PATH      boringtun-cli binary (default /tmp/bt-cli/bin/boringtun-cli;
#                      install: cargo install boringtun-cli --locked --root /tmp/bt-cli)
#   --no-build         do not run `cargo build --release -p coord -p meshd`
#   --append-doc       append the result to docs/BENCHMARKS.md
#                      ("## Data plane (iperf3 through the tunnel)")
#   --max-load L       before measuring, wait (at most 10 min) for the 1-min load average < L
#                      (default: do not wait)
set -euo pipefail

ORIG_CMD="$0 $*"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PATHS="veth,meshd,wggo,bt,bt1"
DURATION=10
ROUNDS=1
PINGS=50
PEERS100=0
PERF_SECS=0
BT_CLI=/tmp/bt-cli/bin/boringtun-cli
BUILD=1
APPEND=0
MAX_LOAD=""

while [ $# -gt 0 ]; do
    case "$1" in
        --paths) PATHS="$2"; shift 2 ;;
        --duration) DURATION="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --pings) PINGS="$2"; shift 2 ;;
        --peers100) PEERS100=1; shift ;;
        --perf) PERF_SECS="$2"; shift 2 ;;
        --bt-cli) BT_CLI="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --append-doc) APPEND=1; shift ;;
        --max-load) MAX_LOAD="$2"; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for t in ip iperf3 ping python3 timeout; do
    command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 1; }
done

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# ---------------------------------------------------------------- cleanup ----
TAG="mfb$$"                       # namespace / interface prefix, unique per run
NS_A="${TAG}a"
NS_B="${TAG}b"
WORK="$(mktemp -d /tmp/meshfunnel-bench.XXXXXX)"
PIDS=()                           # every background process this script started

kill_pids() {
    local p
    [ ${#PIDS[@]} -gt 0 ] || return 0
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 1 50); do       # at most 5 s
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}

teardown() {
    kill_pids
    ip netns del "$NS_A" 2>/dev/null || true
    ip netns del "$NS_B" 2>/dev/null || true
    ip netns del "${TAG}c" 2>/dev/null || true
    rm -f /var/run/wireguard/"${TAG}"*.sock 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    teardown
    rm -rf "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SPAWNED=""
spawn() {  # spawn LOGFILE CMD...: start in background, remember the pid (also in $SPAWNED)
    local logf="$1"; shift
    "$@" >"$logf" 2>&1 &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}

# wait_for SECONDS CMD...: poll CMD every 0.2 s until it succeeds or time runs out
wait_for() {
    local secs="$1"; shift
    local n=$((secs * 5))
    for _ in $(seq 1 "$n"); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    return 1
}

# --------------------------------------------------------------- topology ----
topology_up() {
    teardown
    ip netns add "$NS_A"
    ip netns add "$NS_B"
    ip link add "${TAG}va" netns "$NS_A" type veth peer name "${TAG}vb" netns "$NS_B"
    ip -n "$NS_A" link set lo up
    ip -n "$NS_B" link set lo up
    ip -n "$NS_A" addr add 198.51.100.1/24 dev "${TAG}va"
    ip -n "$NS_B" addr add 198.51.100.2/24 dev "${TAG}vb"
    ip -n "$NS_A" link set "${TAG}va" up
    ip -n "$NS_B" link set "${TAG}vb" up
    wait_for 10 ip netns exec "$NS_A" ping -c 1 -W 1 198.51.100.2 || { log "underlay not up"; return 1; }
}

# ------------------------------------------------------------- measuring ----
proc_rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
proc_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
proc_cpu_ticks() {  # utime+stime of all threads
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
sum_cpu_ticks() { local s=0 p; for p in "$@"; do s=$((s + $(proc_cpu_ticks "$p"))); done; echo $s; }

start_iperf_server() {  # in B
    spawn "$WORK/iperf3-server.log" ip netns exec "$NS_B" iperf3 -s -p 5201
    wait_for 10 sh -c "ip netns exec $NS_B ss -ltn | grep -q ':5201 '" || { log "iperf3 server not up"; return 1; }
}

# iperf_run TARGET STREAMS OUTJSON -> prints Gbit/s (receiver side)
iperf_run() {
    local target="$1" streams="$2" out="$3"
    timeout $((DURATION + 30)) ip netns exec "$NS_A" \
        iperf3 -c "$target" -p 5201 -t "$DURATION" -P "$streams" -J >"$out" 2>&1 || true
    python3 - "$out" <<'EOF'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
    print("%.3f" % (j["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception:
    print("nan")
EOF
}

# ping_run TARGET -> prints "avg mdev" (ms)
ping_run() {
    local out
    out=$(timeout $((PINGS / 10 + 30)) ip netns exec "$NS_A" ping -c "$PINGS" -i 0.05 -W 2 "$1" 2>&1 || true)
    echo "$out" | awk -F'[/ =]+' '/^rtt|^round-trip/ {
        for (i = 1; i <= NF; i++) if ($i == "mdev") { print $(i+2), $(i+4); found=1 } }
        END { if (!found) print "nan nan" }'
}

# RSS sampler: every 0.5 s record VmRSS (KiB) of PID into FILE until killed
rss_sampler() {
    local pid="$1" file="$2"
    spawn /dev/null bash -c "while kill -0 $pid 2>/dev/null; do awk '/^VmRSS:/ {print \$2}' /proc/$pid/status >> '$file' 2>/dev/null; sleep 0.5; done"
}

RESULTS="$WORK/results.tsv"   # path round streams gbps
: >"$RESULTS"
EXTRA="$WORK/extra.tsv"       # path round key value
: >"$EXTRA"

# measure PATH ROUND TARGET DAEMON_PIDS...: 1 and 4 streams, then ping
measure() {
    local path="$1" round="$2" target="$3"; shift 3
    local daemons=("$@")
    # Warm up (handshake) and confirm the path carries traffic.
    if ! wait_for 20 ip netns exec "$NS_A" ping -c 1 -W 1 "$target"; then
        log "$path: no connectivity to $target"
        return 1
    fi
    start_iperf_server
    local streams gbps c0 c1 sfile
    for streams in 1 4; do
        sfile="$WORK/rss-$path-$round-$streams"
        : >"$sfile"
        local samplers=()
        local d
        for d in "${daemons[@]}"; do rss_sampler "$d" "$sfile.$d"; samplers+=("$SPAWNED"); done
        c0=$(sum_cpu_ticks "${daemons[@]}")
        gbps=$(iperf_run "$target" "$streams" "$WORK/iperf-$path-$round-$streams.json")
        c1=$(sum_cpu_ticks "${daemons[@]}")
        for d in "${samplers[@]}"; do kill "$d" 2>/dev/null || true; done
        log "$path round $round: $streams stream(s): $gbps Gbit/s"
        printf '%s\t%s\t%s\t%s\n' "$path" "$round" "$streams" "$gbps" >>"$RESULTS"
        if [ ${#daemons[@]} -gt 0 ]; then
            local tck; tck=$(getconf CLK_TCK)
            printf '%s\t%s\tcpu%s\t%s\n' "$path" "$round" "$streams" \
                "$(python3 -c "print('%.1f' % (($c1 - $c0) / $tck))")" >>"$EXTRA"
            local maxrss=0 v
            for d in "${daemons[@]}"; do
                v=$(sort -n "$sfile.$d" 2>/dev/null | tail -n 1); v=${v:-0}
                [ "$v" -gt "$maxrss" ] && maxrss=$v
            done
            printf '%s\t%s\trss%s\t%s\n' "$path" "$round" "$streams" "$maxrss" >>"$EXTRA"
        fi
    done
    local rtt; rtt=$(ping_run "$target")
    log "$path round $round: RTT avg/mdev $rtt ms"
    printf '%s\t%s\trtt\t%s\n' "$path" "$round" "${rtt// /,}" >>"$EXTRA"
}

# ------------------------------------------------------------------ paths ----
run_veth() {
    topology_up
    measure veth "$1" 198.51.100.2
}

COORD_PID=""
COORD_URL="https://198.51.100.1:8443"
COORD_FP=""
AUTHKEY=""

start_coord() {
    local dir="$WORK/coord"
    rm -rf "$dir"; mkdir -p "$dir"
    spawn "$WORK/coord.log" ip netns exec "$NS_A" "$WORK/bin/coord" \
        --state-dir "$dir/state" serve --listen 198.51.100.1:8443 --tls-san 198.51.100.1
    COORD_PID=$SPAWNED
    wait_for 20 grep -q "TLS certificate fingerprint: " "$WORK/coord.log" || { log "coord did not start"; cat "$WORK/coord.log" >&2; return 1; }
    COORD_FP=$(sed -n 's/^.*TLS certificate fingerprint: //p' "$WORK/coord.log" | head -n 1)
    AUTHKEY=$("$WORK/bin/coord" --state-dir "$dir/state" authkey create --reusable | tr -d '[:space:]')
}

# start_meshd NS NAME [extra args] -> sets MESHD_PID, MESHD_V4
start_meshd() {
    local ns="$1" name="$2"; shift 2
    local logf="$WORK/meshd-$name.log"
    spawn "$logf" ip netns exec "$ns" "$WORK/bin/meshd" \
        --state-dir "$WORK/meshd-$name" up --coord "$COORD_URL" --coord-fingerprint "$COORD_FP" \
        --authkey "$AUTHKEY" --hostname "$name" "$@"
    MESHD_PID=$SPAWNED
    wait_for 30 grep -q "meshd up: " "$logf" || { log "meshd $name did not come up"; tail -n 20 "$logf" >&2; return 1; }
    MESHD_V4=$(grep -m1 "meshd up: " "$logf" | awk '{print $5}')
}

MESHD_A_PID=""
run_meshd() {
    topology_up
    start_coord
    start_meshd "$NS_A" bench-a; MESHD_A_PID=$MESHD_PID
    start_meshd "$NS_B" bench-b; local b_pid=$MESHD_PID b_v4=$MESHD_V4
    log "meshd: bench-a pid $MESHD_A_PID, bench-b pid $b_pid at $b_v4"
    measure meshd "$1" "$b_v4" "$MESHD_A_PID" "$b_pid"
    if [ "$PERF_SECS" != 0 ] && [ "$1" = 1 ]; then perf_meshd "$b_v4"; fi
    if [ "$PEERS100" = 1 ] && [ "$1" = 1 ]; then peers100 "$b_v4"; fi
}

perf_meshd() {  # extra single-stream run with `perf record` on the sending meshd
    local target="$1"
    command -v perf >/dev/null || { log "perf not installed: skipping profile"; return 0; }
    log "perf: recording meshd (pid $MESHD_A_PID) for $PERF_SECS s during an extra 1-stream run"
    local gb
    (sleep 2; timeout $((PERF_SECS + 30)) perf record -F 1999 -e cpu-clock --call-graph dwarf,16384 \
        -p "$MESHD_A_PID" -o "$WORK/perf.data" -- sleep "$PERF_SECS" >"$WORK/perf-record.log" 2>&1) &
    local perf_bg=$!
    PIDS+=("$perf_bg")
    gb=$(DURATION=$((PERF_SECS + 5)) iperf_run "$target" 1 "$WORK/iperf-perf.json")
    wait "$perf_bg" 2>/dev/null || true
    log "perf run: $gb Gbit/s (with perf attached; not in the table)"
    local out="/tmp/meshfunnel-bench-perf-$(date -u +%Y%m%dT%H%M%SZ)"
    {
        echo "# meshd (sending node) during iperf3 -P 1 at $gb Gbit/s, perf record -F 1999 -e cpu-clock --call-graph dwarf"
        echo "## by thread"
        perf report -i "$WORK/perf.data" --stdio --no-children --sort pid -g none 2>/dev/null | grep -v '^$' | head -n 30
        echo "## flat (self) by dso,symbol"
        perf report -i "$WORK/perf.data" --stdio --no-children --sort dso,sym -g none 2>/dev/null | grep -v '^$' | head -n 80
        echo "## self, with callers (caller graph, top entries)"
        perf report -i "$WORK/perf.data" --stdio --no-children --sort sym -g caller,0.5,callee,function,percent --percent-limit 3 2>/dev/null | grep -v '^$' | head -n 300
        echo "## with children"
        perf report -i "$WORK/perf.data" --stdio --children --sort sym -g none 2>/dev/null | grep -v '^$' | head -n 80
    } >"$out.txt"
    log "perf report: $out.txt"
    printf 'meshd\t1\tperf_gbps\t%s\n' "$gb" >>"$EXTRA"
    PERF_REPORT="$out.txt"
}

peers100() {  # 98 extra nodes registered to the same coord -> bench-a has 99 peers
    local target="$1"
    local i up=0 how=""
    local rss0; rss0=$(proc_rss_kib "$MESHD_A_PID")
    if "$WORK/bin/coord" nodes --help 2>/dev/null | grep -q 'add-external'; then
        how="98 nodes added with \`coord nodes add-external\` (a fresh \`wg genkey\` key each)"
        log "peers100: adding 98 external nodes"
        for i in $(seq 1 98); do
            "$WORK/bin/coord" --state-dir "$WORK/coord/state" nodes add-external --name "x$i" \
                --public-key "$(wg genkey | wg pubkey)" >/dev/null 2>"$WORK/add-external.err" && up=$((up + 1))
        done
        [ "$up" -ge 98 ] || { log "peers100: add-external failed:"; cat "$WORK/add-external.err" >&2; }
    elif "$WORK/bin/meshd" up --help 2>/dev/null | grep -q -- '--userspace'; then
        how="98 extra \`meshd up --userspace\` nodes"
        local ns_c="${TAG}c"
        ip netns add "$ns_c"
        ip link add "${TAG}vc" netns "$ns_c" type veth peer name "${TAG}vd" netns "$NS_A"
        ip -n "$ns_c" link set lo up
        ip -n "$ns_c" addr add 198.51.100.3/24 dev "${TAG}vc"
        ip -n "$ns_c" link set "${TAG}vc" up
        ip -n "$NS_A" link set "${TAG}vd" up
        ip -n "$NS_A" route add 198.51.100.3/32 dev "${TAG}vd"
        local socks=0
        "$WORK/bin/meshd" up --help 2>/dev/null | grep -q -- '--socks5' && socks=1
        log "peers100: starting 98 userspace meshd nodes"
        for i in $(seq 1 98); do
            local more=()
            [ $socks = 1 ] && more=(--socks5 "127.0.0.1:$((21000 + i))")
            spawn "$WORK/meshd-x$i.log" ip netns exec "$ns_c" "$WORK/bin/meshd" \
                --state-dir "$WORK/meshd-x$i" up --coord "$COORD_URL" --coord-fingerprint "$COORD_FP" \
                --authkey "$AUTHKEY" --hostname "x$i" --userspace --listen-port 0 "${more[@]}"
            sleep 0.05
        done
        for _ in $(seq 1 120); do   # at most 60 s
            up=$(grep -l "meshd up: " "$WORK"/meshd-x*.log 2>/dev/null | wc -l)
            [ "$up" -ge 98 ] && break
            sleep 0.5
        done
        [ "$up" -ge 98 ] || { log "peers100: x1's log:"; tail -n 5 "$WORK/meshd-x1.log" >&2; }
    else
        log "peers100: neither \`coord nodes add-external\` nor \`meshd up --userspace\`: skipped"
        return 0
    fi
    local peers=0
    for _ in $(seq 1 60); do    # at most 30 s: wait until bench-a sees them
        peers=$("$WORK/bin/meshd" --state-dir "$WORK/meshd-bench-a" status --json 2>/dev/null |
            python3 -c 'import json,sys; j=json.load(sys.stdin); print(len(j.get("peers", [])))' 2>/dev/null || echo 0)
        [ "$peers" -ge 99 ] && break
        sleep 0.5
    done
    sleep 2
    log "peers100: $up extra nodes up; bench-a reports $peers peers; RSS before $rss0 KiB, now $(proc_rss_kib "$MESHD_A_PID") KiB"
    printf 'meshd\t1\tp100_peers\t%s\n' "$peers" >>"$EXTRA"
    printf 'meshd\t1\tp100_how\t%s\n' "$how" >>"$EXTRA"
    printf 'meshd\t1\tp100_rss_idle\t%s\n' "$(proc_rss_kib "$MESHD_A_PID")" >>"$EXTRA"
    # One more single-stream run with 99 peers configured (RSS sampled during it).
    local sfile="$WORK/rss-p100"; : >"$sfile"
    rss_sampler "$MESHD_A_PID" "$sfile"; local s=$SPAWNED
    local gb; gb=$(iperf_run "$target" 1 "$WORK/iperf-p100.json")
    kill "$s" 2>/dev/null || true
    local v; v=$(sort -n "$sfile" | tail -n 1)
    log "peers100: 1 stream $gb Gbit/s, bench-a RSS max $v KiB, HWM $(proc_hwm_kib "$MESHD_A_PID") KiB"
    printf 'meshd\t1\tp100_gbps\t%s\n' "$gb" >>"$EXTRA"
    printf 'meshd\t1\tp100_rss_run\t%s\n' "${v:-0}" >>"$EXTRA"
    printf 'meshd\t1\tp100_hwm\t%s\n' "$(proc_hwm_kib "$MESHD_A_PID")" >>"$EXTRA"
    kill_pids
    ip netns del "${TAG}c" 2>/dev/null || true
}

# wg_keys: writes $WORK/{a,b}.key and sets PUB_A, PUB_B
wg_keys() {
    umask 077
    wg genkey >"$WORK/a.key"; wg genkey >"$WORK/b.key"
    PUB_A=$(wg pubkey <"$WORK/a.key"); PUB_B=$(wg pubkey <"$WORK/b.key")
}

# wg_configure NS IFACE KEY ADDR PEERPUB PEERADDR ENDPOINT
wg_configure() {
    local ns="$1" ifc="$2" key="$3" addr="$4" peer="$5" peer_addr="$6" ep="$7"
    ip netns exec "$ns" wg set "$ifc" private-key "$key" listen-port 51820 \
        peer "$peer" allowed-ips "$peer_addr/32" endpoint "$ep:51820"
    ip -n "$ns" addr add "$addr/24" dev "$ifc"
    ip -n "$ns" link set "$ifc" mtu 1420 up
}

# run_userspace_wg PATH ROUND CMD...: CMD is run as `CMD IFACE` in each namespace (foreground)
run_userspace_wg() {
    local path="$1" round="$2"; shift 2
    topology_up
    wg_keys
    local ifa="${TAG}wa" ifb="${TAG}wb"
    local pa pb
    spawn "$WORK/$path-a.log" ip netns exec "$NS_A" env WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 "$@" "$ifa"; pa=$SPAWNED
    spawn "$WORK/$path-b.log" ip netns exec "$NS_B" env WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 "$@" "$ifb"; pb=$SPAWNED
    wait_for 15 test -S "/var/run/wireguard/$ifa.sock" || { log "$path: $ifa did not come up"; cat "$WORK/$path-a.log" >&2; return 1; }
    wait_for 15 test -S "/var/run/wireguard/$ifb.sock" || { log "$path: $ifb did not come up"; cat "$WORK/$path-b.log" >&2; return 1; }
    wg_configure "$NS_A" "$ifa" "$WORK/a.key" 192.0.2.1 "$PUB_B" 192.0.2.2 198.51.100.2
    wg_configure "$NS_B" "$ifb" "$WORK/b.key" 192.0.2.2 "$PUB_A" 192.0.2.1 198.51.100.1
    measure "$path" "$round" 192.0.2.2 "$pa" "$pb"
}

run_wggo() {
    command -v wireguard-go >/dev/null || { log "wireguard-go not installed (apt-get install wireguard-go): skipping"; return 0; }
    command -v wg >/dev/null || { log "wg not installed (wireguard-tools): skipping"; return 0; }
    run_userspace_wg wggo "$1" wireguard-go -f
}

run_bt() {
    [ -x "$BT_CLI" ] || { log "boringtun-cli not found at $BT_CLI: skipping"; return 0; }
    run_userspace_wg bt "$1" "$BT_CLI" --foreground --disable-drop-privileges
}

run_bt1() {
    [ -x "$BT_CLI" ] || { log "boringtun-cli not found at $BT_CLI: skipping"; return 0; }
    run_userspace_wg bt1 "$1" "$BT_CLI" --foreground --disable-drop-privileges --threads 1
}

# ------------------------------------------------------------------- main ----
if [ "$BUILD" = 1 ]; then
    log "building release coord and meshd"
    if ! (cd "$REPO" && cargo build --release -p coord -p meshd); then
        log "BUILD FAILED: measuring the existing target/release binaries (see 'built' in the header)"
    fi
fi
# Private copies: others may rebuild target/release while this runs.
mkdir -p "$WORK/bin"
for b in coord meshd; do
    [ -x "$REPO/target/release/$b" ] || { echo "missing $REPO/target/release/$b" >&2; exit 1; }
    cp "$REPO/target/release/$b" "$WORK/bin/$b"
done
BIN_DATE=$(date -u -r "$REPO/target/release/meshd" +%Y-%m-%dT%H:%M:%SZ)

if [ -n "$MAX_LOAD" ]; then
    for _ in $(seq 1 60); do   # at most 10 min
        l=$(cut -d' ' -f1 /proc/loadavg)
        python3 -c "import sys; sys.exit(0 if $l < $MAX_LOAD else 1)" && break
        log "load average $l >= $MAX_LOAD: waiting"
        sleep 10
    done
fi
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
DATE_START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
COMMIT=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$REPO" && { git diff --quiet HEAD -- meshd coord proto keys Cargo.lock 2>/dev/null || echo "+dirty"; })
PERF_REPORT=""

IFS=',' read -r -a PATH_LIST <<<"$PATHS"
for round in $(seq 1 "$ROUNDS"); do
    for p in "${PATH_LIST[@]}"; do
        log "=== $p (round $round/$ROUNDS)"
        case "$p" in
            veth) run_veth "$round" ;;
            meshd) run_meshd "$round" ;;
            wggo) run_wggo "$round" ;;
            bt) run_bt "$round" ;;
            bt1) run_bt1 "$round" ;;
            *) log "unknown path $p" ;;
        esac || log "$p round $round failed"
        teardown
    done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

BT_VERSION=$([ -x "$BT_CLI" ] && "$BT_CLI" --version 2>/dev/null | head -n 1 || echo "-")
WGGO_VERSION=$(dpkg-query -W -f '${Version}' wireguard-go 2>/dev/null || echo "-")
TABLE="$WORK/table.md"
python3 - "$RESULTS" "$EXTRA" "$ROUNDS" >"$TABLE" <<'EOF'
import sys, statistics, math
results, extra, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
tp = {}
for line in open(results):
    p, r, s, g = line.split("\t")
    tp.setdefault((p, s), []).append(float(g))
ex = {}
for line in open(extra):
    p, r, k, v = line.rstrip("\n").split("\t")
    ex.setdefault((p, k), []).append(v)

def med(xs):
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")

def cell(p, s):
    xs = tp.get((p, s))
    if not xs:
        return "—"
    m = med(xs)
    if len(xs) > 1:
        return "%.2f (%s)" % (m, ", ".join("%.2f" % x for x in xs))
    return "%.2f" % m

def gb(p, s):
    xs = tp.get((p, s))
    return med(xs) if xs else float("nan")

def ratio(a, b):
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "—"
    return "%.2f×" % (a / b)

names = {
    "veth": "raw veth (ceiling)",
    "meshd": "meshd (TUN)",
    "wggo": "wireguard-go",
    "bt": "boringtun-cli (default threads)",
    "bt1": "boringtun-cli `-t 1`",
}
order = [p for p in ["veth", "meshd", "wggo", "bt", "bt1"] if (p, "1") in tp]
print("| path | 1 stream Gbit/s | 4 streams Gbit/s | 1 stream / veth | 4 streams / veth | RTT avg ms | RTT mdev ms | daemon CPU s (1 / 4 streams, both ends) | daemon RSS max (per process) |")
print("|---|---|---|---|---|---|---|---|---|")
for p in order:
    rtts = [v.split(",") for v in ex.get((p, "rtt"), [])]
    avg = med([float(a) for a, _ in rtts]) if rtts else float("nan")
    mdev = med([float(b) for _, b in rtts]) if rtts else float("nan")
    cpu1 = ex.get((p, "cpu1")); cpu4 = ex.get((p, "cpu4"))
    cpu = "%s / %s" % (cpu1[0], cpu4[0]) if cpu1 and cpu4 else "—"
    rss = ex.get((p, "rss1"), []) + ex.get((p, "rss4"), [])
    rss = "%.1f MiB" % (max(int(x) for x in rss) / 1024) if rss else "—"
    print("| %s | %s | %s | %s | %s | %.3f | %.3f | %s | %s |" % (
        names[p], cell(p, "1"), cell(p, "4"),
        ratio(gb(p, "1"), gb("veth", "1")), ratio(gb(p, "4"), gb("veth", "4")),
        avg, mdev, cpu, rss))
print()
parts = []
for other in ["wggo", "bt", "bt1"]:
    if (other, "1") in tp and ("meshd", "1") in tp:
        parts.append("meshd / %s: %s (1 stream), %s (4 streams)" % (
            names[other], ratio(gb("meshd", "1"), gb(other, "1")), ratio(gb("meshd", "4"), gb(other, "4"))))
if parts:
    print("Ratios: " + "; ".join(parts) + ".")
if ("meshd", "p100_peers") in ex:
    g = lambda k: ex[("meshd", k)][0]
    print()
    print(("meshd with 100 nodes in the mesh (%s): " % g("p100_how")) +
          "bench-a reported %s peers; its RSS idle %.1f MiB, max during a 1-stream run %.1f MiB (VmHWM %.1f MiB); that run: %s Gbit/s." % (
              g("p100_peers"), int(g("p100_rss_idle")) / 1024, int(g("p100_rss_run")) / 1024,
              int(g("p100_hwm")) / 1024, g("p100_gbps")))
if ("meshd", "perf_gbps") in ex:
    print()
    print("Profiled run (perf attached to the sending meshd; not in the table): %s Gbit/s." % ex[("meshd", "perf_gbps")][0])
EOF

HEADER="Run $DATE_START @ $COMMIT$DIRTY (meshd/coord built $BIN_DATE); $(nproc) CPU, $(uname -r); load average at start $LOAD_START, at end $LOAD_END; iperf3 $(iperf3 --version | head -n1 | awk '{print $2}'), wireguard-go $WGGO_VERSION, $BT_VERSION; $ROUNDS round(s), ${DURATION} s per iperf3 run, ping -c $PINGS -i 0.05."
echo
echo "$HEADER"
echo "Command: \`$ORIG_CMD\`"
echo
cat "$TABLE"
[ -n "$PERF_REPORT" ] && { echo; echo "perf report: $PERF_REPORT"; }

if [ "$APPEND" = 1 ]; then
    python3 - "$REPO/docs/BENCHMARKS.md" "$TABLE" "$HEADER" "$ORIG_CMD" "$DATE_START" "$COMMIT$DIRTY" <<'EOF'
import sys
doc, table, header, cmd, date, commit = sys.argv[1:7]
title = "## Data plane (iperf3 through the tunnel)"
intro = """
`netns-tests/bench/dataplane.sh` builds the same two-host topology once per path (two network
namespaces joined by one veth pair, underlay 198.51.100.1/24 and 198.51.100.2/24) and measures
`iperf3 -c B -t 10 -P N -J` (N = 1 and 4; receiver-side `sum_received.bits_per_second`) from A to B
and `ping -c 50 -i 0.05` (avg/mdev) through: the raw veth (ceiling); meshd in TUN mode (release
`coord` in namespace A, one `meshd up` per namespace); wireguard-go (Debian package, configured with
`wg`, MTU 1420); boringtun-cli from crates.io (`--foreground --disable-drop-privileges`, default
threads and `-t 1`). *daemon CPU s* is the user+system CPU time both tunnel processes used during
that iperf3 run (from `/proc/PID/stat`); *RSS max* is the largest VmRSS of one of them, sampled
every 0.5 s during the runs. Run: `netns-tests/bench/dataplane.sh --peers100 --perf 5 --append-doc`
(root; see the script's header for options).
"""
text = open(doc).read()
entry = "\n### %s @ %s\n\n%s\n\nCommand: `%s`\n\n%s" % (date, commit, header, cmd, open(table).read())
if title not in text:
    text = text.rstrip("\n") + "\n\n" + title + "\n" + intro + entry
else:
    start = text.index(title) + len(title)
    nxt = text.find("\n## ", start)
    if nxt == -1:
        text = text.rstrip("\n") + "\n" + entry
    else:
        text = text[:nxt].rstrip("\n") + "\n" + entry + "\n" + text[nxt:]
open(doc, "w").write(text.rstrip("\n") + "\n")
EOF
    log "appended to docs/BENCHMARKS.md"
fi
