#!/usr/bin/env bash
# Funnel benchmark: HTTPS requests per second and latency from a `client` namespace through
#   funnel-edge (TLS) → the mesh (WireGuard; the edge in userspace mode, its default, the node
#   in TUN mode) → meshd's funnel ingress →
#   nginx on the node's 127.0.0.1,
# against the same nginx content served with TLS directly on the edge host (no tunnel), in the
# same run. Also the time from `meshd funnel` to the first successful public request.
#
# Topology (namespaces made here, joined by a bridge in a namespace of its own; nothing leaves
# them): coord 203.0.113.10, edge .20 (funnel-edge on :443, nginx with TLS on :9443), client .30
# (wrk, curl), node .40 (meshd, nginx on 127.0.0.1:8080).
#
# Usage (as root, from anywhere in the repository):
#   netns-tests/bench/funnel.sh [--duration S] [--connections N,M,...] [--rounds N] [--firsts N]
#                               [--no-build] [--edge-tun] [--node-userspace] [--edge-cpu F]
#                               [--pin] [--hold S] [--append-doc]
# --connections: wrk's concurrent connections for requests per second, one row each (default
# 16,64,256: with 16 the funnel's longer path leaves its edge waiting part of the time, with 64 it
# is busy, 256 are more requests in flight than a small connection pool to the node would keep).
# --rounds N: each requests-per-second row alternates funnel and direct N times (default 1), each
# run S/N seconds, and reports the means, so that the machine's speed changing during a row (a
# shared or virtual machine) weighs on both sides alike, and the median (and range) of the N
# pairs' funnel / direct ratios. Each run starts all its connections anew, so short runs weigh
# the start of a burst more (see docs/BENCHMARKS.md).
# --edge-tun: the edge joins the mesh with a TUN device (`funnel-edge run --tun`) instead of its
# default userspace stack. (--edge-userspace, the default, is still accepted.)
# --node-userspace: the node runs `meshd up --userspace` (its funnel ingress on the userspace
# stack) instead of its default TUN device.
# --edge-cpu F: the edge host's processes (funnel-edge, and the direct nginx) get at most F CPUs
# (a cgroup CPU quota), the other hosts are not limited: requests per second then measure what
# the edge host can serve through the funnel against what it can serve itself, as when the
# client, the edge and the node are machines of their own (F must leave the rest room, e.g. 0.4).
# --pin: the edge host's processes run on CPU 0 only, every other process (coord, the node's
# meshd and nginx, wrk) on the other CPUs, so that the edge host has a core and its caches to
# itself as a machine of its own would (unpinned, the scheduler runs the node's meshd on the
# edge's core between the edge's turns; the direct runs have no node to do that). Needs 2 CPUs.
# --hold S: after the first requests, keep the topology up for S seconds before measuring (to
# attach a profiler or try requests by hand; the namespaces are named in the log).
# Needs: wrk, nginx, openssl, curl (Debian: apt-get install wrk nginx-light openssl curl).
set -euo pipefail

ORIG_CMD="netns-tests/bench/funnel.sh $*"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DURATION=10
CONNS=16,64,256
ROUNDS=1
FIRSTS=5
BUILD=1
APPEND=0
HOLD=0
EDGE_MODE=()
NODE_MODE=()
EDGE_CPU=""
PIN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) DURATION="$2"; shift 2 ;;
        --connections) CONNS="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --firsts) FIRSTS="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --hold) HOLD="$2"; shift 2 ;;
        --edge-userspace) EDGE_MODE=(); shift ;;
        --edge-tun) EDGE_MODE=(--tun); shift ;;
        --node-userspace) NODE_MODE=(--userspace); shift ;;
        --edge-cpu) EDGE_CPU="$2"; shift 2 ;;
        --pin) PIN=1; shift ;;
        --append-doc) APPEND=1; shift ;;
        -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
for t in ip wrk nginx openssl curl timeout; do
    command -v "$t" >/dev/null || { echo "missing: $t" >&2; exit 1; }
done

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

TAG="mff$$"
HOSTS=(coord edge client node)
WORK="$(mktemp -d /tmp/meshfunnel-fbench.XXXXXX)"
PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    for h in "${HOSTS[@]}" sw; do ip netns del "$TAG$h" 2>/dev/null || true; done
    [ -z "$CG" ] || rmdir "$CG" 2>/dev/null || true
    rm -rf "/etc/netns/${TAG}client" "$WORK"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local h="$1"; shift; ip netns exec "$TAG$h" "$@"; }
# --pin: CPU 0 for the edge host, the others for the rest (affinity is inherited by children).
ON_EDGE_CPU=()
ON_OTHER_CPUS=()
if [ "$PIN" = 1 ]; then
    ncpu=$(nproc)
    [ "$ncpu" -ge 2 ] || { echo "--pin needs 2 CPUs, this machine has $ncpu" >&2; exit 2; }
    ON_EDGE_CPU=(taskset -c 0)
    ON_OTHER_CPUS=(taskset -c "1-$((ncpu - 1))")
fi
PIN_NOTE=""
if [ "$PIN" = 1 ]; then PIN_NOTE=", the edge host pinned to CPU 0 and the rest to the others"; fi
# The edge host's CPU limit (--edge-cpu): a cgroup with a CFS quota (v1 cpu controller or v2).
# The period is 10 ms, not the kernel's default 100 ms: with 100 ms a 0.4-CPU quota runs the
# edge for 40 ms and then stops it for 60, long enough for a 1 MiB response's packets to overflow
# its socket buffer (thousands of node retransmissions per 4 s run), which a machine with 0.4 of
# a CPU's capacity would not see; with 10 ms the stops are 6 ms.
CG=""
PERIOD=10000
if [ -n "$EDGE_CPU" ]; then
    quota=$(awk -v f="$EDGE_CPU" -v p="$PERIOD" 'BEGIN { printf "%d", f * p }')
    [ "$quota" -ge 1000 ] || { echo "--edge-cpu $EDGE_CPU: too small" >&2; exit 2; }
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        CG="/sys/fs/cgroup/$TAG-edge"
        mkdir "$CG"
        echo "$quota $PERIOD" >"$CG/cpu.max"
    else
        CG="/sys/fs/cgroup/cpu/$TAG-edge"
        mkdir "$CG"
        echo "$PERIOD" >"$CG/cpu.cfs_period_us"
        echo "$quota" >"$CG/cpu.cfs_quota_us"
    fi
fi
spawn() {  # spawn HOST LOG CMD...: processes of the edge host go into its cgroup, if any
    local h="$1" logf="$2"; shift 2
    local pin=("${ON_OTHER_CPUS[@]}")
    if [ "$h" = edge ]; then pin=("${ON_EDGE_CPU[@]}"); fi
    if [ "$h" = edge ] && [ -n "$CG" ]; then
        # Joined before entering the namespace (`ip netns exec` mounts a sysfs of its own).
        "${pin[@]}" sh -c 'echo $$ >"$0" && exec "$@"' "$CG/cgroup.procs" \
            ip netns exec "$TAG$h" "$@" >"$logf" 2>&1 &
    else
        "${pin[@]}" ip netns exec "$TAG$h" "$@" >"$logf" 2>&1 &
    fi
    PIDS+=("$!")
}
await_line() {  # await_line FILE PREFIX: the rest of the first line starting with PREFIX
    local rest
    for _ in $(seq 300); do
        rest=$(awk -v p="$2" 'index($0, p) == 1 { print substr($0, length(p) + 1); exit }' "$1" \
            2>/dev/null || true)
        [ -n "$rest" ] && { echo "$rest"; return 0; }
        sleep 0.1
    done
    echo "timed out waiting for '$2' in $1:" >&2; cat "$1" >&2; exit 1
}

if [ "$BUILD" = 1 ]; then
    log "building release coord, meshd, funnel-edge"
    (cd "$REPO" && cargo build --release -q -p coord -p meshd -p funnel-edge)
fi
BIN="${MESHFUNNEL_BIN:-$REPO/target/release}"  # another build, for an A/B run

# ------------------------------------------------------------- topology ----
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "topology $TAG"
ip netns add "${TAG}sw"
in_ns sw ip link add br0 type bridge
in_ns sw ip link set br0 up
# The switch forwards frames and nothing else: no iptables for bridged traffic (where the host
# has br_netfilter loaded, every frame would otherwise pass its firewall).
in_ns sw sysctl -q -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 \
    net.bridge.bridge-nf-call-arptables=0 2>/dev/null || true
i=0
for h in "${HOSTS[@]}"; do
    i=$((i + 1))
    ip netns add "$TAG$h"
    ip link add "${TAG}$i" type veth peer name "${TAG}p$i"
    ip link set "${TAG}$i" netns "$TAG$h"
    ip link set "${TAG}p$i" netns "${TAG}sw"
    in_ns sw ip link set "${TAG}p$i" master br0 up
    in_ns "$h" ip link set lo up
    in_ns "$h" ip link set "${TAG}$i" name eth0
    in_ns "$h" ip link set eth0 up
done
in_ns coord ip addr add 203.0.113.10/24 dev eth0
in_ns edge ip addr add 203.0.113.20/24 dev eth0
in_ns client ip addr add 203.0.113.30/24 dev eth0
in_ns node ip addr add 203.0.113.40/24 dev eth0
# The client resolves the funnel name and the direct name to the edge (ip netns exec bind-mounts
# /etc/netns/NS/hosts over /etc/hosts).
mkdir -p "/etc/netns/${TAG}client"
printf '127.0.0.1 localhost\n203.0.113.20 node.bench.example direct.bench.example\n' \
    >"/etc/netns/${TAG}client/hosts"

# --------------------------------------------------------------- content ----
mkdir -p "$WORK/www"
printf '<!doctype html><title>small</title><p>hello from the benchmark</p>\n' >"$WORK/www/small.html"
head -c 1048576 /dev/urandom >"$WORK/www/1m.bin"
# nginx's workers run as an unprivileged user: they must be able to read the content.
chmod 0755 "$WORK" "$WORK/www"
chmod 0644 "$WORK/www/"*

nginx_conf() {  # nginx_conf NAME LISTEN [tls]: a one-worker nginx serving $WORK/www
    local name="$1" listen="$2" tls="${3:-}"
    local ssl=""
    if [ -n "$tls" ]; then
        ssl="ssl_certificate $WORK/direct.pem; ssl_certificate_key $WORK/direct.key;
             ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:s$name:1m;"
        listen="$listen ssl http2"
    fi
    mkdir -p "$WORK/nginx-$name"
    cat >"$WORK/nginx-$name/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/nginx-$name/pid;
error_log $WORK/nginx-$name/error.log;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path $WORK/nginx-$name;
    proxy_temp_path $WORK/nginx-$name;
    fastcgi_temp_path $WORK/nginx-$name;
    uwsgi_temp_path $WORK/nginx-$name;
    scgi_temp_path $WORK/nginx-$name;
    server { listen $listen; $ssl root $WORK/www; }
}
CONF
}
# The direct server's certificate: ECDSA P-256, like the edge's leaf certificates.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=direct.bench.example -addext subjectAltName=DNS:direct.bench.example \
    -keyout "$WORK/direct.key" -out "$WORK/direct.pem" 2>/dev/null
nginx_conf node 127.0.0.1:8080
nginx_conf direct 203.0.113.20:9443 tls
spawn node "$WORK/nginx-node.log" nginx -c "$WORK/nginx-node/nginx.conf"
spawn edge "$WORK/nginx-direct.log" nginx -c "$WORK/nginx-direct/nginx.conf"
NGINX_NODE_PID=${PIDS[-2]}
NGINX_DIRECT_PID=${PIDS[-1]}

# ------------------------------------------------------------ the mesh ----
log "coord, edge, node"
spawn coord "$WORK/coord.out" "$BIN/coord" --state-dir "$WORK/coord" serve \
    --listen 203.0.113.10:8443 --tls-san 203.0.113.10 --funnel-domain bench.example
fp=$(await_line "$WORK/coord.out" "TLS certificate fingerprint: ")
cat >"$WORK/policy.json" <<POLICY
{"acls": [], "funnel": [{"nodes": ["node"], "ports": [8080]}], "edges": [{"tag": "tag:edge"}]}
POLICY
"$BIN/coord" --state-dir "$WORK/coord" policy set "$WORK/policy.json" >/dev/null
edge_key=$("$BIN/coord" --state-dir "$WORK/coord" authkey create --tag edge 2>/dev/null)
node_key=$("$BIN/coord" --state-dir "$WORK/coord" authkey create 2>/dev/null)
spawn edge "$WORK/edge.out" env FUNNEL_EDGE_LOG=warn "$BIN/funnel-edge" run \
    --state-dir "$WORK/edge" --domain bench.example --https-listen 203.0.113.20:443 \
    --public-address 203.0.113.20 --coord https://203.0.113.10:8443 --coord-fingerprint "$fp" \
    --authkey "$edge_key" "${EDGE_MODE[@]}"
await_line "$WORK/edge.out" "funnel-edge: serving" >/dev/null
spawn node "$WORK/node.out" env MESHD_LOG=warn "$BIN/meshd" --state-dir "$WORK/node" up \
    --coord https://203.0.113.10:8443 --coord-fingerprint "$fp" --authkey "$node_key" \
    --hostname node "${NODE_MODE[@]}"
await_line "$WORK/node.out" "meshd up: " >/dev/null
EDGE_PID=${PIDS[-2]}
NODE_PID=${PIDS[-1]}

URL=https://node.bench.example/small.html
code() { in_ns client curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$WORK/edge/ca.pem" "$URL" 2>/dev/null || true; }

# ------------------------------------------------- time to first request ----
log "time from 'meshd funnel' to the first successful public request ($FIRSTS times)"
firsts=()
for n in $(seq "$FIRSTS"); do
    t0=$(date +%s%N)
    in_ns node "$BIN/meshd" --state-dir "$WORK/node" funnel 8080 --bg >/dev/null
    ok=0
    for _ in $(seq 1000); do
        [ "$(code)" = 200 ] && { ok=1; break; }
        sleep 0.01
    done
    t1=$(date +%s%N)
    if [ $ok != 1 ]; then
        echo "the funnel never answered (last status $(code)); logs:" >&2
        tail -n 20 "$WORK/edge.out" "$WORK/node.out" "$WORK/coord.out" >&2
        in_ns client curl -sv --max-time 2 --cacert "$WORK/edge/ca.pem" "$URL" >&2 || true
        exit 1
    fi
    firsts+=("$(( (t1 - t0) / 1000000 ))")
    log "  round $n: $(( (t1 - t0) / 1000000 )) ms"
    if [ "$n" -lt "$FIRSTS" ]; then
        in_ns node "$BIN/meshd" --state-dir "$WORK/node" funnel off >/dev/null
        for _ in $(seq 500); do [ "$(code)" = 404 ] && break; sleep 0.01; done
        sleep 1  # the edge and the node drop each other as peers
    fi
done
first_sorted=$(printf '%s\n' "${firsts[@]}" | sort -n | tr '\n' ' ')
first_median=$(printf '%s\n' "${firsts[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
first_max=$(printf '%s\n' "${firsts[@]}" | sort -n | tail -1)

if [ "$HOLD" != 0 ]; then
    log "holding for $HOLD s: namespaces ${TAG}{coord,edge,client,node}, work dir $WORK," \
        "edge pid $EDGE_PID, node pid $NODE_PID"
    sleep "$HOLD" || true  # ended early by killing the sleep
fi

# ------------------------------------------------------------------- wrk ----
# Throughput: wrk with $CONNS connections; CPU per request: the user + system time of every
# process that serves the request, from /proc, over the requests wrk completed (funnel: the
# edge host's funnel-edge, and on the node meshd + nginx; direct: the edge host's nginx). Latency: wrk with one
# connection, so that it is the path's own and not the queueing of a saturated machine.
TCK=$(getconf CLK_TCK)
cpu_ticks() {  # cpu_ticks PID...: user + system ticks of these processes and their children
    local p t=0
    for p in "$@" $(for p in "$@"; do pgrep -P "$p" || true; done); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
    done
    echo "$t"
}
# Requests per second are counted in bytes (responses.sh): a response still arriving when a run
# ends counts for what arrived.
# shellcheck source=netns-tests/bench/responses.sh
. "$REPO/netns-tests/bench/responses.sh"
bytes_hook "$WORK/bytes.lua"
# One response's size per "URL MODE", measured once per page and mode (below) for their runs.
declare -A RESPONSE_SIZE
# wrk_run URL MODE CONNS "PIDS_A" "PIDS_B": "rps cpu_a_us cpu_b_us p50_ms p99_ms", the CPU
# times per request (in bytes, as above) of two groups of processes (A on the edge host, B on
# the node). Only 2xx and 3xx responses count: others (an edge's 502 page, say) are taken out of
# rps and the per-request CPU in proportion, and added up in $WORK/bad for the report.
wrk_run() {
    local url="$1" mode="$2" conns="$3" a="$4" b="$5" extra=() secs="${RUN_SECS:-$DURATION}"
    [ "$mode" = close ] && extra=(-H "Connection: close")
    local out a0 b0 a1 b1 size="${RESPONSE_SIZE["$url $mode"]:-0}"
    # shellcheck disable=SC2086 # PID lists
    { a0=$(cpu_ticks $a); b0=$(cpu_ticks $b); }
    out=$("${ON_OTHER_CPUS[@]}" ip netns exec "${TAG}client" wrk -t1 -c"$conns" -d"${secs}s" --timeout 30s --latency -s "$WORK/bytes.lua" "${extra[@]}" "$url" 2>&1)
    # shellcheck disable=SC2086
    { a1=$(cpu_ticks $a); b1=$(cpu_ticks $b); }
    printf '== %s %s c%s (%s bytes a response)\n%s\n' "$url" "$mode" "$conns" "$size" "$out" >>"$WORK/wrk.log"
    local rps n p50 p99
    local total bad
    total=$(echo "$out" | awk '/requests in/ {print $1}')
    bad=$(echo "$out" | awk '/Non-2xx or 3xx responses:/ {print $5}')
    read -r n rps < <(echo "$out" | responses "$size")
    if [ "${bad:-0}" -gt 0 ]; then
        log "  $url ($mode, $conns connections): $bad of $total responses were not 2xx/3xx"
        echo "$bad $url $mode c$conns" >>"$WORK/bad"
    fi
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    echo "${rps:-0} $(per_request $((a1 - a0)) "$n") $(per_request $((b1 - b0)) "$n")" \
        "$(to_ms "${p50:-0ms}") $(to_ms "${p99:-0ms}")"
}
per_request() {  # per_request TICKS REQUESTS: microseconds
    awk -v d="$1" -v n="${2:-0}" -v hz="$TCK" \
        'BEGIN { if (n > 0) printf "%.0f", d * 1e6 / hz / n; else print "-" }'
}
# alternating URL_F URL_D MODE CONNS: "f_rps f_edge f_node d_rps d_cpu r_med r_min r_max",
# means over ROUNDS runs of each, funnel and direct in turn (the first of a pair alternates too);
# CPU per request is weighted by requests per second (the runs are of equal length). r_*: the
# median, lowest and highest funnel / direct ratio of the rounds' pairs (each pair ran within
# seconds of each other, so a change of the machine's speed between rounds weighs on both of
# its runs; the ratio of the means does not have that property).
alternating() {
    local f_url="$1" d_url="$2" mode="$3" conns="$4" i f d out=""
    local RUN_SECS=$(( DURATION / ROUNDS > 0 ? DURATION / ROUNDS : 1 ))
    for ((i = 0; i < ROUNDS; i++)); do
        if ((i % 2 == 0)); then
            f=$(wrk_run "$f_url" "$mode" "$conns" "$EDGE_PID" "$NODE_PID $NGINX_NODE_PID")
            d=$(wrk_run "$d_url" "$mode" "$conns" "$NGINX_DIRECT_PID" "")
        else
            d=$(wrk_run "$d_url" "$mode" "$conns" "$NGINX_DIRECT_PID" "")
            f=$(wrk_run "$f_url" "$mode" "$conns" "$EDGE_PID" "$NODE_PID $NGINX_NODE_PID")
        fi
        out+="$f $d"$'\n'
    done
    local pairs
    pairs=$(printf '%s' "$out" | awk '$6 > 0 { printf "%.4f\n", $1 / $6 }' | sort -g | tr '\n' ' ')
    printf '%s' "$out" | awk -v pairs="$pairs" '
        function num(v) { return v == "-" ? 0 : v }
        { fr += $1; fe += $1 * num($2); fn += $1 * num($3); dr += $6; dc += $6 * num($7); n++ }
        END {
            if (n == 0) { print "0 - - 0 - - - -"; exit }
            k = split(pairs, r, " ")
            med = k == 0 ? "-" : (k % 2 ? r[(k + 1) / 2] : (r[k / 2] + r[k / 2 + 1]) / 2)
            printf "%.2f %s %s %.2f %s", fr / n, (fr > 0 ? sprintf("%.0f", fe / fr) : "-"),
                (fr > 0 ? sprintf("%.0f", fn / fr) : "-"), dr / n, (dr > 0 ? sprintf("%.0f", dc / dr) : "-")
            if (k == 0) print " - - -"; else printf " %.2f %.2f %.2f\n", med, r[1], r[k]
        }'
}
to_ms() {  # wrk prints 812.00us, 1.23ms, 2.01s
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000
        printf "%.2f", n }'
}

rows=()
for size in small.html 1m.bin; do
    for mode in keepalive close; do
        f_url="https://node.bench.example/$size"
        d_url="https://direct.bench.example:9443/$size"
        for u in "$f_url" "$d_url"; do
            RESPONSE_SIZE["$u $mode"]=$(response_size "${TAG}client" "$u" "$mode")
        done
        log "wrk $size ($mode, 1 connection): funnel, direct"
        read -r _ _ _ f_p50 f_p99 < <(wrk_run "$f_url" "$mode" 1 "" "")
        read -r _ _ _ d_p50 d_p99 < <(wrk_run "$d_url" "$mode" 1 "" "")
        added=$(awk -v f="$f_p99" -v d="$d_p99" 'BEGIN { printf "%.2f", f - d }')
        for conns in ${CONNS//,/ }; do
            log "wrk $size ($mode, $conns connections): funnel, direct"
            read -r f_rps f_edge f_node d_rps d_cpu r_med r_min r_max \
                < <(alternating "$f_url" "$d_url" "$mode" "$conns")
            ratio=$(awk -v f="$f_rps" -v d="$d_rps" 'BEGIN { if (d > 0) printf "%.2f", f / d; else print "-" }')
            if [ "$ROUNDS" = 1 ]; then pair_col="-"; else pair_col="${r_med}× (${r_min}–${r_max})"; fi
            rows+=("| $size, $mode, $conns | $f_rps | $d_rps | ${ratio}× | $pair_col | $f_edge + $f_node / $d_cpu | $f_p50 / $f_p99 | $d_p50 / $d_p99 | $added |")
        done
    done
done
edge_rss=$(awk '/^VmHWM:/ {printf "%.1f MiB", $2 / 1024}' "/proc/$EDGE_PID/status" 2>/dev/null || echo "?")
node_rss=$(awk '/^VmHWM:/ {printf "%.1f MiB", $2 / 1024}' "/proc/$NODE_PID/status" 2>/dev/null || echo "?")

commit=$(cd "$REPO" && git rev-parse --short HEAD)$(cd "$REPO" && git diff --quiet || echo "+dirty")
if [ "$ROUNDS" = 1 ]; then
    WRK_LINE="wrk -t1 -d${DURATION}s, $CONNS connections (the third column of a row) for req/s and CPU, 1 for latency"
else
    WRK_LINE="wrk -t1, $CONNS connections (the third column of a row) for req/s and CPU: means of $ROUNDS runs of $(( DURATION / ROUNDS > 0 ? DURATION / ROUNDS : 1 )) s each, funnel and direct alternating; 1 connection for ${DURATION} s for latency"
fi
report=$(cat <<REPORT
### Funnel: $(date -u +%Y-%m-%dT%H:%M:%SZ) @ $commit

$(nproc) CPU${EDGE_CPU:+ (edge host limited to $EDGE_CPU CPU, 10 ms quota period)}${PIN_NOTE}, $(uname -r); load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg);
$WRK_LINE; requests per second (and CPU per request) count wrk's bytes received in responses
of the page's size, so responses still arriving as a run ends count for what arrived; nginx
$(nginx -v 2>&1 | sed 's/.*nginx\///'), one worker each, on the node's 127.0.0.1 and (TLS, HTTP/2) on the edge host.
Command: \`$ORIG_CMD\`

| request, connections | funnel req/s | direct req/s | funnel / direct | median of the rounds' ratios (lowest–highest) | CPU µs per request: funnel edge + node / direct | funnel p50 / p99 ms, 1 connection | direct p50 / p99 ms, 1 connection | p99 added ms |
|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${rows[@]}")

Time from \`meshd funnel\` to the first 200 at the client (ms, $FIRSTS rounds, each with the edge
and the node meeting as peers anew): $first_sorted(median $first_median, max $first_max).
Peak RSS: funnel-edge $edge_rss, node meshd $node_rss.
Responses other than 2xx/3xx (not counted above): $(if [ -s "$WORK/bad" ]; then
    awk '{ n += $1; r[$2 " " $3 " " $4] += $1 } END { printf "%d (", n; s = "";
        for (k in r) { printf "%s%s: %d", s, k, r[k]; s = "; " } printf ")" }' "$WORK/bad"
else echo none; fi).
REPORT
)
echo
echo "$report"
if [ "$APPEND" = 1 ]; then
    doc="$REPO/docs/BENCHMARKS.md"
    grep -q '^## Funnel (HTTPS through the edge and the mesh)' "$doc" ||
        printf '\n## Funnel (HTTPS through the edge and the mesh)\n\nScript: `netns-tests/bench/funnel.sh` (see its header).\n' >>"$doc"
    printf '\n%s\n' "$report" >>"$doc"
    log "appended to docs/BENCHMARKS.md"
fi
