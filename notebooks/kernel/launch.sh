#!/usr/bin/env bash
# Starts the evcxr Jupyter kernel for transferlab notebooks.
#
# Each kernel gets a persistent build directory (a "slot") so a restarted kernel recompiles
# only what changed; a lock per slot keeps two kernels that run at once from sharing one.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export EVCXR_CONFIG_DIR="$here"
# evcxr builds every crate with debug assertions; inside candle's gemm they halve matrix
# throughput. Cargo's environment overrides the generated manifest's profile.
export CARGO_PROFILE_DEV_DEBUG_ASSERTIONS=false
evcxr="${EVCXR_JUPYTER:-$(command -v evcxr_jupyter || echo "$HOME/.cargo/bin/evcxr_jupyter")}"
slots="${TRANSFERLAB_EVCXR_DIR:-$root/target/evcxr}"
mkdir -p "$slots"
for i in 0 1 2 3 4 5 6 7; do
    exec 9>"$slots/slot-$i.lock"
    if flock -n 9; then
        export EVCXR_TMPDIR="$slots/slot-$i"
        mkdir -p "$EVCXR_TMPDIR"
        exec "$evcxr" "$@"
    fi
    exec 9>&-
done
# Eight kernels already running: this one builds in a temporary directory.
exec "$evcxr" "$@"
