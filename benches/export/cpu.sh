#!/usr/bin/env bash
# CPU and wall-clock benchmark (not a test) of a full export and of `disk convert`, each
# paired with its qemu-img peer, on an idle machine and with one core kept busy:
#   A. `cosnap export` of a 3-VM collection (qcow2, GIB GiB virtual each, 25 % data) —
#      manifest with a SHA-256 (or DIGEST) of every file — vs three parallel
#      `qemu-img convert -O qcow2` of the same snapshot disks + `sync`; the CPU side of the
#      peer also counts `sha256sum` of its outputs (what a manifest costs it).
#   B. `cosnap disk convert` of one disk vs `qemu-img convert -O qcow2` + `sync FILE`.
# Wall = the command with its sync; CPU = user + system of the whole process tree
# (`/usr/bin/time`, children included). qemu-img convert writes its output with cache mode
# "unsafe" (no flush at all) and leaves the writeback to whoever syncs: the `sync` after it
# runs under the same timer, so the writeback it does in its own context is counted on the
# peer's side, as cosnap's own fsync and writeback kicks are on cosnap's. Writeback the
# kernel's flusher threads do (rare in these short runs: outputs stay under the dirty
# background threshold) is counted on neither side. Rounds alternate the two sides (A B, B A, ...) and
# each ratio is taken round by round; the median, min and max of those ratios are printed.
# "busy": a shell busy loop this script starts, pins nowhere and kills, runs through both
# sides of every round. The page cache is dropped before every timed command when root.
#
# Usage: [ROUNDS=5] [GIB=1] [DIGEST=blake3] benches/export/cpu.sh COSNAP_BIN [WORKDIR]
set -euo pipefail
BIN=$(realpath "${1:?usage: cpu.sh COSNAP_BIN [WORKDIR]}")
WORK=$(realpath -m "${2:-$(mktemp -d /var/tmp/cosnap-cpu-bench.XXXX)}")
ROUNDS=${ROUNDS:-5}; GIB=${GIB:-1}; DIGEST=${DIGEST:-}
mkdir -p "$WORK"; cd "$WORK"; rm -rf data out qemu conv; mkdir -p images out qemu conv
MIB=$((1 << 20))
D="--data-dir $WORK/data"
BUSY_PID=
trap '[ -n "$BUSY_PID" ] && kill "$BUSY_PID" 2>/dev/null; true' EXIT
json_id() { python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])'; }

# --- the disks and the snapshot to export ---
vms=()
for i in 1 2 3; do
  img=images/vm$i.qcow2
  [ -f "$img" ] || {
    qemu-img create -q -f qcow2 "$img" "${GIB}G"
    # 25 % data: 4 MiB of a pattern every 16 MiB.
    cmds=(); for ((off = 0; off < GIB * 1024 * MIB; off += 16 * MIB)); do cmds+=(-c "write -P $(( (off / MIB + i) % 250 + 1 )) $off 4M"); done
    qemu-io -f qcow2 "${cmds[@]}" "$img" >/dev/null
  }
  vms+=("$($BIN $D --json vm define --name vm$i --cpus 2 --memory-mb 1024 --disk "$WORK/$img" | json_id)")
done
coll=$($BIN $D --json collection define cpu-bench | json_id)
for v in "${vms[@]}"; do $BIN $D collection add-member "$coll" "$v" >/dev/null; done
snap=$($BIN $D --json snapshot create "$coll" --type recovery | json_id)
sync

# --- measuring ---
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
# timed CMD...: runs CMD under /usr/bin/time, prints "wall cpu" (cpu = user + sys, children included).
timed() {
  /usr/bin/time -f '%e %U %S' -o time.out "$@" >/dev/null
  awk '{printf "%s %.3f\n", $1, $2 + $3}' time.out
}
stats() { # values... → "median (min–max)"
  printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.3f (%.3f–%.3f)", m, v[1], v[NR]}'
}
div() { echo "$1 / $2" | bc -l; }
export_args=(--json export "$snap" "$WORK/out" --wait --subdirectory)
[ -n "$DIGEST" ] && export_args+=(--digest "$DIGEST")

run_export() { # → "wall cpu"
  cold
  timed sh -c "$BIN $D ${export_args[*]} > export.json && sync"
  rm -rf "$(python3 -c 'import json;print(json.load(open("export.json"))["path"])')"
}
run_qemu_convert3() { # → "wall cpu" of the three converts + sync, then the sha256sum CPU
  rm -rf qemu; mkdir qemu; cold
  timed sh -c 'for i in 1 2 3; do qemu-img convert -f qcow2 -O qcow2 images/vm$i.qcow2 qemu/vm$i.qcow2 & done; wait; sync'
  timed sha256sum qemu/vm1.qcow2 qemu/vm2.qcow2 qemu/vm3.qcow2 | awk '{print $2}'
  rm -rf qemu
}
run_disk_convert() { # tool → "wall cpu"
  rm -f conv/out.qcow2; cold
  case $1 in
    cosnap) timed sh -c "$BIN disk convert images/vm1.qcow2 conv/out.qcow2 --format qcow2 && sync conv/out.qcow2" ;;
    qemu) timed sh -c 'qemu-img convert -f qcow2 -O qcow2 images/vm1.qcow2 conv/out.qcow2 && sync conv/out.qcow2' ;;
  esac
}

bench_mode() { # idle|busy
  local mode=$1 r ew ec qw qc sc cw cc kw kc
  local e_wall=() e_cpu=() e_cpu_sha=() c_cpu=() c_wall=() ew_s=() ec_s=() qw_s=() qc_s=() sc_s=()
  local load0; load0=$(cut -d' ' -f1-3 /proc/loadavg)
  if [ "$mode" = busy ]; then sh -c 'while :; do :; done' & BUSY_PID=$!; fi
  for ((r = 1; r <= ROUNDS; r++)); do
    if ((r % 2)); then
      read -r ew ec < <(run_export)
      { read -r qw qc; read -r sc; } < <(run_qemu_convert3)
      read -r cw cc < <(run_disk_convert cosnap); read -r kw kc < <(run_disk_convert qemu)
    else
      { read -r qw qc; read -r sc; } < <(run_qemu_convert3)
      read -r ew ec < <(run_export)
      read -r kw kc < <(run_disk_convert qemu); read -r cw cc < <(run_disk_convert cosnap)
    fi
    ew_s+=("$ew"); ec_s+=("$ec"); qw_s+=("$qw"); qc_s+=("$qc"); sc_s+=("$sc")
    e_wall+=("$(div "$ew" "$qw")"); e_cpu+=("$(div "$ec" "$qc")"); e_cpu_sha+=("$(div "$ec" "$(echo "$qc + $sc" | bc -l)")")
    c_wall+=("$(div "$cw" "$kw")"); c_cpu+=("$(div "$cc" "$kc")")
    printf '%s round %d: export %.2f s / %.2f s CPU; 3× qemu-img convert + sync %.2f s / %.2f s CPU (+ sha256sum %.2f s CPU); disk convert %.2f s / %.2f s CPU vs qemu-img %.2f s / %.2f s CPU\n' \
      "$mode" "$r" "$ew" "$ec" "$qw" "$qc" "$sc" "$cw" "$cc" "$kw" "$kc"
  done
  if [ -n "$BUSY_PID" ]; then kill "$BUSY_PID"; wait "$BUSY_PID" 2>/dev/null || true; BUSY_PID=; fi
  echo "== $mode: $ROUNDS rounds, median (min–max), ratios per round (< 1: cosnap spends less); load at start $load0, at end $(cut -d' ' -f1-3 /proc/loadavg) =="
  echo "  export wall $(stats "${ew_s[@]}") s, CPU $(stats "${ec_s[@]}") s; peer wall $(stats "${qw_s[@]}") s, CPU $(stats "${qc_s[@]}") s, sha256sum CPU $(stats "${sc_s[@]}") s"
  echo "  export / 3× qemu-img convert + sync:  wall $(stats "${e_wall[@]}"), CPU $(stats "${e_cpu[@]}")"
  echo "  export CPU / (qemu-img CPU + sha256sum CPU): $(stats "${e_cpu_sha[@]}")"
  echo "  disk convert / qemu-img convert + sync:  wall $(stats "${c_wall[@]}"), CPU $(stats "${c_cpu[@]}")"
}

echo "work dir $WORK; 3 × $GIB GiB qcow2, 25 % data; digest ${DIGEST:-sha256 (default)}; $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
bench_mode idle
bench_mode busy
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
