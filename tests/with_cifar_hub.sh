#!/usr/bin/env bash
# Runs a command with CIFAR-10 resolvable by its hub id `uoft-cs/cifar10`, offline: serves
# ../shared/data/cifar10-jpeg (the hub layout of that repository) on a loopback hub
# (`tlab serve-hub`) and points HF_ENDPOINT at it, with a project-local HF_HOME so the user's
# own cache is untouched. Without that folder the command runs as it is: online, the real
# hub answers; offline, the code's error says how to get the data.
# Usage: tests/with_cifar_hub.sh TLAB_BINARY COMMAND [ARGS...]
set -euo pipefail
tlab="$1"; shift
root="$(cd "$(dirname "$0")/.." && pwd)"
data="$root/../shared/data/cifar10-jpeg"
if [ ! -d "$data" ]; then
    echo "note: $data not found; uoft-cs/cifar10 comes from HF_ENDPOINT (${HF_ENDPOINT:-https://huggingface.co})" >&2
    exec "$@"
fi
log="$(mktemp)"
"$tlab" serve-hub --dataset "uoft-cs/cifar10=$data" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 1 100); do
    endpoint="$(head -n1 "$log")"
    case "$endpoint" in http*) break ;; esac
    if ! kill -0 $server 2>/dev/null; then cat "$log" >&2; exit 1; fi
    sleep 0.1
done
case "$endpoint" in http*) ;; *) echo "loopback hub did not start: $(cat "$log")" >&2; exit 1 ;; esac
export HF_ENDPOINT="$endpoint"
export HF_HOME="${TLAB_TEST_HF_HOME:-$root/runs/hf-home}"
export TLAB_CIFAR_HUB=1
unset HF_HUB_OFFLINE
"$@"
