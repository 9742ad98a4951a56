#!/usr/bin/env bash
# The test command from the README: every unit, property, conformance, crash and
# simulator test in the workspace. Stops by itself; needs no network.
set -euo pipefail
cd "$(dirname "$0")"
exec cargo test --workspace --locked "$@"
