#!/usr/bin/env bash
# Export throughput of a running VM vs the same export with the VM switched off (not a test):
# one test guest with 2 qcow2 disks of 1 GiB, 512 MiB of data each; one recovery snapshot taken
# while it runs; the same full export of that snapshot ROUNDS times while the VM runs, then
# ROUNDS times after `vm stop --force`. Prints each round, the medians and running/off ratio.
# Usage: [ROUNDS=n] [GUEST_MODE=idle|writer] benches/vmm/export_running.sh [WORKDIR]
#   (default 3 rounds, idle guest; builds the guest and cosnap if needed; run as root to drop
#   the page cache before each export)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
MODE=${GUEST_MODE:-idle}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
GUEST=${COSNAP_GUEST_DIR:-$TARGET/guest}
bash scripts/guest/build.sh "$GUEST" >/dev/null
cargo build --release -q -p cosnap
BIN=$TARGET/release/cosnap
WORK=$(realpath -m "${1:-$(mktemp -d /var/tmp/cosnap-export-running.XXXX)}")
mkdir -p "$WORK"; cd "$WORK"; rm -rf data out images; mkdir -p images out
D="--data-dir $WORK/data"
MIB=$((1 << 20))
id_of() { python3 -c 'import json,sys;print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
now() { date +%s.%N; }
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# 512 MiB of data per disk: 4 MiB written every 8 MiB, a pattern byte per extent.
for disk in a b; do
  qemu-img create -q -f qcow2 "images/$disk.qcow2" 1G
  cmds=(); for ((off = 0; off < 1024 * MIB; off += 8 * MIB)); do cmds+=(-c "write -P $(( (off / MIB) % 250 + 1 )) $off 4M"); done
  qemu-io -f qcow2 "${cmds[@]}" "images/$disk.qcow2" >/dev/null
done

vm=$($BIN $D --json vm define --name bench --cpus 1 --memory-mb 256 \
  --disk "$WORK/images/a.qcow2" --disk "$WORK/images/b.qcow2" \
  --kernel "$GUEST/vmlinuz" --initrd "$GUEST/initrd.gz" \
  --cmdline "console=ttyS0 quiet panic=-1 cosnap.vm=bench cosnap.mode=$MODE cosnap.disks=vda,vdb" | id_of id)
coll=$($BIN $D --json collection define bench | id_of id)
$BIN $D collection add-member "$coll" "$vm" >/dev/null
$BIN $D vm start "$vm" >/dev/null
trap '$BIN $D vm stop "$vm" --force >/dev/null 2>&1 || true' EXIT
until grep -q COSNAP-READY "$WORK/data/run/$vm/serial.log" 2>/dev/null; do sleep 0.2; done
snap=$($BIN $D --json snapshot create "$coll" --type recovery | id_of id)

# One full export of the snapshot into a fresh directory; prints seconds.
export_once() {
  rm -rf out; mkdir out; cold
  local t0 t1; t0=$(now)
  $BIN $D --json export "$snap" "$WORK/out" --wait >/dev/null
  sync; t1=$(now)
  echo "$t1 - $t0" | bc
}

running=(); off=()
for ((r = 1; r <= ROUNDS; r++)); do
  running+=("$(export_once)")
  printf 'running round %d: %.2f s (guest %s)\n' "$r" "${running[-1]}" "$MODE"
done
$BIN $D vm stop "$vm" --force >/dev/null
for ((r = 1; r <= ROUNDS; r++)); do
  off+=("$(export_once)")
  printf 'off round %d: %.2f s\n' "$r" "${off[-1]}"
done

m_run=$(median "${running[@]}"); m_off=$(median "${off[@]}")
printf 'median: running %.2f s, off %.2f s, running/off %.2f (2 disks x 512 MiB data)\n' \
  "$m_run" "$m_off" "$(echo "$m_run / $m_off" | bc -l)"
