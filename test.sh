#!/usr/bin/env bash
# The project's test command: every unit, integration and example/bench target of the workspace,
# then the doc tests (`--all-targets` does not include them). Extra arguments go to both cargo
# invocations, e.g. `./test.sh -- --nocapture` or `./test.sh wg_interop`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# The system tools the tests use (wg, ...): installed when missing (.ci/run has done it already).
[ -n "${MESHFUNNEL_DEPS_DONE:-}" ] || bash scripts/test-deps.sh

cargo test --workspace --all-targets "$@"
cargo test --workspace --doc "$@"
