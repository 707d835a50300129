#!/usr/bin/env bash
# The group-freeze pause window (first `stop` sent to last `cont` answered) for 1, 2 and 4
# writing test guests under QEMU with 2 disks each (qcow2 and VHDX bases), over ROUNDS
# freezes: prints median and max per group size. Target: median < 50 ms under TCG here.
# Usage: benches/vmm/pause_window.sh [ROUNDS]   (default 12; builds the guest if needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-12}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
GUEST=${COSNAP_GUEST_DIR:-$TARGET/guest}
bash scripts/guest/build.sh "$GUEST" >/dev/null
cargo build --release -q -p cosnap-vmm --example pause_window
for VMS in 1 2 4; do
    WORK=$(mktemp -d)
    "$TARGET/release/examples/pause_window" "$GUEST" "$WORK" "$VMS" "$ROUNDS" | tail -1
    rm -rf "$WORK"
done
