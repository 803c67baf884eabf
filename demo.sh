#!/usr/bin/env bash
# meshfunnel on one machine, with embedded defaults. For now (the node daemon and the funnel edge
# are still to come) it builds and starts the coordinator on loopback, creates an auth key, and
# shows how a node would use it. Ctrl+C stops everything and leaves nothing running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

state=$(mktemp -d "${TMPDIR:-/tmp}/meshfunnel-demo.XXXXXX")
coord_pid=""
cleanup() {
    [ -n "$coord_pid" ] && kill "$coord_pid" 2>/dev/null && wait "$coord_pid" 2>/dev/null
    rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "==> building (release)"
cargo build --release -q -p coord
coord=./target/release/coord

listen=${MESHFUNNEL_COORD_LISTEN:-127.0.0.1:8443}
"$coord" --state-dir "$state/coord" serve --listen "$listen" >"$state/coord.out" 2>"$state/coord.log" &
coord_pid=$!
for _ in $(seq 100); do
    grep -q '^TLS certificate fingerprint' "$state/coord.out" 2>/dev/null && break
    kill -0 "$coord_pid" 2>/dev/null || { cat "$state/coord.log" >&2; exit 1; }
    sleep 0.1
done
url=$(sed -n 's/^coord listening on //p' "$state/coord.out")
fingerprint=$(sed -n 's/^TLS certificate fingerprint: //p' "$state/coord.out")
key=$("$coord" --state-dir "$state/coord" authkey create --reusable --expires 1h 2>/dev/null)

cat <<INFO

coord is running at $url
  certificate fingerprint: $fingerprint
  health:                  curl -sk $url/healthz
  auth key (reusable, 1h): $key
  admin:                   $coord --state-dir $state/coord nodes list
                           $coord --state-dir $state/coord authkey list
A node joins with: meshd up --coord $url --coord-fingerprint $fingerprint --authkey $key
(meshd's data plane is the next milestone.)

Ctrl+C stops coord and removes its state ($state).
INFO
wait "$coord_pid"
