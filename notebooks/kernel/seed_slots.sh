#!/usr/bin/env bash
# Copies kernel slot 0's build (left by `just warm`) into slots 1..N, so that N + 1 kernels
# running at once all start with the crate compiled. Cargo judges freshness by the sources'
# paths and times, which a copy that keeps times (cp -a) preserves; the copy lands under a
# temporary name and replaces the old build in one rename, and a slot whose kernel is running
# (its lock held) is left alone.
#
# Usage: seed_slots.sh N
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
slots="${TRANSFERLAB_EVCXR_DIR:-$root/target/evcxr}"
count="${1:?usage: seed_slots.sh N (the number of slots to fill beside slot 0)}"
source_build="$slots/slot-0/target"
if [ ! -d "$source_build" ]; then
    echo "seed_slots: $source_build does not exist; run \`just warm\` first" >&2
    exit 1
fi
# Slot 0 held for the whole copy: a kernel building there meanwhile would leave a torn copy.
exec 8>"$slots/slot-0.lock"
if ! flock -n 8; then
    echo "seed_slots: a kernel is running in slot 0; nothing copied (its build may be changing)" >&2
    exit 0
fi
for i in $(seq 1 "$count"); do
    slot="$slots/slot-$i"
    mkdir -p "$slot"
    exec 9>"$slots/slot-$i.lock"
    if ! flock -n 9; then
        echo "seed_slots: a kernel is running in $slot; left as it is" >&2
        exec 9>&-
        continue
    fi
    rm -rf "$slot/target.seeding"
    cp -a "$source_build" "$slot/target.seeding"
    rm -rf "$slot/target"
    mv "$slot/target.seeding" "$slot/target"
    exec 9>&-
done
