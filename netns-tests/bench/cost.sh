#!/usr/bin/env bash
# Where the CPU of one request goes, on a topology that `funnel.sh --hold S` keeps up: runs wrk
# from its client namespace (through the funnel, or straight to the edge host's nginx with
# --direct) and reports, per request (counted in bytes: responses.sh):
#   - the CPU time (user + system, from /proc) of every process of the edge and node hosts;
#   - the edge host's system calls and context switches (perf stat; skipped without perf);
#   - how often the edge host's CPU quota stopped it (its cgroup's cpu.stat, with --edge-cpu).
# The counts tell how much work each wakeup of the edge does (a request per epoll_wait or many);
# the CPU times say which host pays for what. Kernel network processing runs in the context of
# whichever process sent the packet (one machine: a veth send runs the receiver's stack), so a
# host's figure includes the receive work of the host it sends to.
#
# Usage (as root, while funnel.sh --hold runs; TAG is the mffNNN its log names):
#   netns-tests/bench/cost.sh TAG [--direct] [--page small.html|1m.bin] [--connections N]
#                                 [--duration S] [--close]
# --close: a new connection per request (wrk sends `Connection: close`). Requests are counted
# in bytes, as funnel.sh counts them (responses.sh).
# Needs: wrk; perf (Debian: linux-perf) for the system call counts.
set -euo pipefail

[ $# -ge 1 ] || { sed -n '2,18p' "$0"; exit 2; }
TAG="$1"; shift
URL_HOST="https://node.bench.example"
PAGE=small.html
CONNS=16
SECS=5
MODE=keepalive
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) URL_HOST="https://direct.bench.example:9443"; shift ;;
        --page) PAGE="$2"; shift 2 ;;
        --connections) CONNS="$2"; shift 2 ;;
        --duration) SECS="$2"; shift 2 ;;
        --close) MODE=close; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
ip netns pids "${TAG}client" >/dev/null 2>&1 || { echo "no topology $TAG held" >&2; exit 1; }

ticks() {  # ticks PID: user + system clock ticks, 0 once gone
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
EDGE_PIDS=$(ip netns pids "${TAG}edge" | tr '\n' ' ')
NODE_PIDS=$(ip netns pids "${TAG}node" | tr '\n' ' ')
declare -A before
for p in $EDGE_PIDS $NODE_PIDS; do before[$p]=$(ticks "$p"); done

CG=""
for d in "/sys/fs/cgroup/cpu/$TAG-edge" "/sys/fs/cgroup/$TAG-edge"; do
    [ -f "$d/cpu.stat" ] && CG="$d"
done
[ -n "$CG" ] && cp "$CG/cpu.stat" "/tmp/cost.$$.cg0"
trap 'rm -f /tmp/cost.$$.*' EXIT

PERF_EVENTS="syscalls:sys_enter_epoll_wait,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read"
PERF_EVENTS+=",syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendmsg"
PERF_EVENTS+=",syscalls:sys_enter_recvmmsg,context-switches"
if command -v perf >/dev/null; then
    # The edge host's processes, over the whole wrk run (perf ends with it).
    perf stat -x, -e "$PERF_EVENTS" -p "$(echo $EDGE_PIDS | tr ' ' ,)" \
        -o "/tmp/cost.$$.perf" -- sleep "$SECS" &
    PERF=$!
fi
# shellcheck source=netns-tests/bench/responses.sh
. "$(dirname "$0")/responses.sh"
bytes_hook "/tmp/cost.$$.lua"
size=$(response_size "${TAG}client" "$URL_HOST/$PAGE" "$MODE")
wrk_extra=()
[ "$MODE" = close ] && wrk_extra=(-H "Connection: close")
out=$(ip netns exec "${TAG}client" wrk -t1 -c"$CONNS" -d"${SECS}s" -s "/tmp/cost.$$.lua" \
    "${wrk_extra[@]}" "$URL_HOST/$PAGE" 2>&1)
[ -n "${PERF:-}" ] && wait "$PERF"
read -r n rate < <(echo "$out" | responses "$size")
[ "$n" -gt 0 ] || { echo "wrk completed no request:" >&2; echo "$out" >&2; exit 1; }

TCK=$(getconf CLK_TCK)
echo "$URL_HOST/$PAGE ($MODE), $CONNS connections, ${SECS} s: $n requests, $rate per second" \
    "(counted in bytes, $size a response)"
echo "CPU µs per request:"
for host in edge node; do
    pids=$EDGE_PIDS; [ $host = node ] && pids=$NODE_PIDS
    for p in $pids; do
        d=$(( $(ticks "$p") - ${before[$p]:-0} ))
        [ "$d" -gt 0 ] || continue
        printf '  %-5s %-12s %8.1f\n' "$host" "$(cat "/proc/$p/comm" 2>/dev/null || echo "$p")" \
            "$(echo "$d $TCK $n" | awk '{print $1 * 1e6 / $2 / $3}')"
    done
done
if [ -f "/tmp/cost.$$.perf" ]; then
    echo "edge host, per request:"
    awk -F, -v n="$n" '$1 ~ /^[0-9]+$/ { sub(/^syscalls:sys_enter_/, "", $3);
        if ($1 > 0) printf "  %-16s %8.3f\n", $3, $1 / n }' "/tmp/cost.$$.perf"
fi
if [ -n "$CG" ]; then
    paste "/tmp/cost.$$.cg0" "$CG/cpu.stat" | awk -v s="$SECS" '
        { d[$1] = $4 - $2 }
        END { printf "edge host quota: stopped in %d of %d periods, %.0f%% of the time\n",
              d["nr_throttled"], d["nr_periods"],
              (d["throttled_time"] ? d["throttled_time"] / 1e9 : d["throttled_usec"] / 1e6) / s * 100 }'
fi
