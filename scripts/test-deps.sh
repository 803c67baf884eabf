#!/usr/bin/env bash
# Installs the system tools the tests use (Debian packages), when any is missing. A no-op when all
# are installed. Needs root (or sudo) only when something must be installed. Called by ./test.sh
# and .ci/run; later issues extend APT_PACKAGES and nothing else.
set -euo pipefail

APT_PACKAGES=(wireguard-tools wireguard-go iproute2 nftables iperf3 curl dnsutils sqlite3 procps iputils-ping python3
    chromium libnss3-tools tesseract-ocr nginx-light openssl)

export DEBIAN_FRONTEND=noninteractive
log() { printf '[deps] %s\n' "$*" >&2; }

as_root() {
    if ((EUID == 0)); then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo env DEBIAN_FRONTEND=noninteractive "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

# retry N COMMAND...: up to N attempts, waiting a little longer after each failure.
retry() {
    local attempts=$1 i
    shift
    for ((i = 1; i <= attempts; i++)); do
        "$@" && return 0
        if ((i < attempts)); then
            log "attempt $i/$attempts failed: $*; retrying in $((i * 5))s"
            sleep $((i * 5))
        fi
    done
    log "giving up after $attempts attempts: $*"
    return 1
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null)" != ii* ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    exit 0
fi
log "installing: ${missing[*]}"
# Wait for another apt/dpkg (e.g. unattended-upgrades on a fresh machine) instead of failing.
lock=(-o DPkg::Lock::Timeout=300)
retry 3 as_root apt-get "${lock[@]}" -q update
retry 3 as_root apt-get "${lock[@]}" -q install -y --no-install-recommends "${missing[@]}"
