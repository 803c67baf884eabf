#!/usr/bin/env bash
# The project's test command: the doc tests, then every unit, integration and example target of the
# workspace, then one line with the totals. Extra arguments go to both cargo invocations, e.g.
# `./test.sh -- --nocapture` or `./test.sh wg_interop`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# The system tools the tests use (wg, ...): installed when missing (.ci/run has done it already).
[ -n "${MESHFUNNEL_DEPS_DONE:-}" ] || bash scripts/test-deps.sh

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --doc "$@" 2>&1 | tee -a "$log"
cargo test --workspace --all-targets "$@" 2>&1 | tee -a "$log"
# Totals over every `test result:` line above, as one closing line.
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
