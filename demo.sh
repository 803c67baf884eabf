#!/usr/bin/env bash
# meshfunnel on one machine, with embedded defaults, no root: a coordinator, a funnel edge and a
# node (userspace mode) on loopback; a local HTTP service (the built-in sample page, or yours with
# `./demo.sh PORT`) funneled through the edge; the public URL and the curl command printed.
# Ctrl+C stops everything and leaves nothing running.
#
# Environment: MESHFUNNEL_HTTPS_PORT (default 8443), MESHFUNNEL_NAME (default hello).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

https_port=${MESHFUNNEL_HTTPS_PORT:-8443}
name=${MESHFUNNEL_NAME:-hello}
service_port=${1:-}
domain=funnel.localhost

state=$(mktemp -d "${TMPDIR:-/tmp}/meshfunnel-demo.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until FILE has a line starting with PREFIX (the process PID must stay alive); prints the
# rest of that line.
await_line() {
    local file=$1 prefix=$2 pid=$3 log=$4
    local rest
    for _ in $(seq 300); do
        rest=$(awk -v p="$prefix" 'index($0, p) == 1 { print substr($0, length(p) + 1); exit }' \
            "$file" 2>/dev/null || true)
        if [ -n "$rest" ]; then
            echo "$rest"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "demo: a process stopped early; its log:" >&2
            cat "$log" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "demo: timed out waiting for \"$prefix\" in $file" >&2
    cat "$log" >&2
    exit 1
}

echo "==> building (cargo build --release: coord, meshd, funnel-edge)"
cargo build --release -q -p coord -p meshd -p funnel-edge
bin=./target/release

echo "==> coordinator"
"$bin/coord" --state-dir "$state/coord" serve --listen 127.0.0.1:0 \
    --funnel-domain "$domain" --funnel-port "$https_port" \
    >"$state/coord.out" 2>"$state/coord.log" &
pids+=($!)
coord_url=$(await_line "$state/coord.out" "coord listening on " "${pids[-1]}" "$state/coord.log")
fingerprint=$(await_line "$state/coord.out" "TLS certificate fingerprint: " "${pids[-1]}" "$state/coord.log")

echo "==> a local service"
if [ -z "$service_port" ]; then
    "$bin/meshd" sample-page --listen 127.0.0.1:0 >"$state/page.out" 2>"$state/page.log" &
    pids+=($!)
    page=$(await_line "$state/page.out" "sample page on " "${pids[-1]}" "$state/page.log")
    service_port=${page##*:}
    service_port=${service_port%/}
fi

# The policy: members reach each other; node "$name" may funnel the service's port; tag:edge
# nodes are edges.
cat >"$state/policy.json" <<POLICY
{
  "acls": [{"src": ["*"], "dst": ["*"]}],
  "funnel": [{"nodes": ["$name"], "ports": [$service_port], "max_ttl": "24h"}],
  "edges": [{"tag": "tag:edge", "domains": ["$domain"]}]
}
POLICY
"$bin/coord" --state-dir "$state/coord" policy set "$state/policy.json" >/dev/null
edge_key=$("$bin/coord" --state-dir "$state/coord" authkey create --tag edge --expires 1h 2>/dev/null)
node_key=$("$bin/coord" --state-dir "$state/coord" authkey create --expires 1h 2>/dev/null)

echo "==> funnel edge (userspace) on 127.0.0.1:$https_port"
"$bin/funnel-edge" run --state-dir "$state/edge" --domain "$domain" \
    --https-listen "127.0.0.1:$https_port" --public-address 127.0.0.1 --listen-port 0 \
    --coord "$coord_url" --coord-fingerprint "$fingerprint" --authkey "$edge_key" \
    >"$state/edge.out" 2>"$state/edge.log" &
pids+=($!)
await_line "$state/edge.out" "funnel-edge: serving" "${pids[-1]}" "$state/edge.log" >/dev/null

echo "==> node \"$name\" (userspace)"
"$bin/meshd" --state-dir "$state/node" up --userspace --hostname "$name" --listen-port 0 \
    --socks5 127.0.0.1:0 --endpoint 127.0.0.1 \
    --coord "$coord_url" --coord-fingerprint "$fingerprint" --authkey "$node_key" \
    >"$state/node.out" 2>"$state/node.log" &
pids+=($!)
await_line "$state/node.out" "meshd up: " "${pids[-1]}" "$state/node.log" >/dev/null

echo "==> meshd funnel $service_port"
"$bin/meshd" --state-dir "$state/node" funnel "$service_port" \
    >"$state/funnel.out" 2>"$state/funnel.log" &
pids+=($!)
url=$(await_line "$state/funnel.out" "https://" "${pids[-1]}" "$state/funnel.log")
url="https://$url"
host=${url#https://}
host=${host%%:*}

ca="$state/edge/ca.pem"
check="curl --cacert $ca $url"
# The first request waits for the edge's WireGuard handshake with the node: retry briefly.
for _ in $(seq 50); do
    if curl -sS --max-time 3 --cacert "$ca" "$url" -o "$state/first.html" 2>/dev/null; then
        break
    fi
    sleep 0.2
done
if ! grep -qi "<html" "$state/first.html" 2>/dev/null; then
    echo "demo: the funnel did not answer; logs are in the edge and node output below" >&2
    tail -n 20 "$state/edge.log" "$state/node.log" >&2
    exit 1
fi

cat <<INFO

Your local service (127.0.0.1:$service_port) is published at:

    $url

Try it (the edge's own CA signed the certificate; $host resolves to 127.0.0.1):

    $check

Funnel status:   $bin/meshd --state-dir $state/node funnel status
Edge CA:         $ca  (browsers: import it as a trusted authority)
Ctrl+C stops the coordinator, the edge, the node and the service, and removes $state.
INFO
wait "${pids[-1]}"
