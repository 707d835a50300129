#!/usr/bin/env bash
# Export benchmark (not a test): a 3-VM collection (qcow2, 4 GiB virtual each, 25 % data)
#   1. full export with cosnap vs `qemu-img convert` of the same three snapshot disks, same run;
#   2. differential export after 1 % of the blocks changed vs the full export.
# Prints each round, the best-of-ROUNDS (default 3) times, ratios and cosnap's peak RSS.
# Usage: [ROUNDS=n] benches/export/export.sh COSNAP_BIN [WORKDIR]   (run as root to drop caches)
set -euo pipefail
BIN=$(realpath "${1:?usage: export.sh COSNAP_BIN [WORKDIR]}")
WORK=$(realpath -m "${2:-$(mktemp -d /var/tmp/cosnap-export-bench.XXXX)}")
mkdir -p "$WORK"; cd "$WORK"; rm -rf data out qemu; mkdir -p images out qemu
GIB=$((1 << 30)); MIB=$((1 << 20))
D="--data-dir $WORK/data"
now() { date +%s.%N; }
rss_of() { grep 'Maximum resident' "$1" | awk '{print $6}'; }

vms=()
for i in 1 2 3; do
  img=images/vm$i.qcow2
  [ -f "$img" ] || {
    qemu-img create -q -f qcow2 "$img" 4G
    # 25 % data: 4 MiB of random-ish bytes every 16 MiB (64 writes per GiB).
    cmds=(); for ((off = 0; off < 4 * GIB; off += 16 * MIB)); do cmds+=(-c "write -P $(( (off / MIB + i) % 250 + 1 )) $off 4M"); done
    qemu-io -f qcow2 "${cmds[@]}" "$img" >/dev/null
  }
  vms+=("$($BIN $D --json vm define --name vm$i --cpus 2 --memory-mb 1024 --disk "$WORK/$img" | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')")
done
coll=$($BIN $D --json collection define bench | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
for v in "${vms[@]}"; do $BIN $D collection add-member "$coll" "$v" >/dev/null; done
s1=$($BIN $D --json snapshot create "$coll" --type recovery | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
ROUNDS=${ROUNDS:-5}
cold() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
secs() { echo "$2 - $1" | bc; }
min() { printf '%s\n' "$@" | sort -g | head -1; }
package_of() { python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))["path"])' "$1"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
# MiB written to the device holding WORK (what bounds both tools on a disk-bound machine).
DEV=$(basename "$(df --output=source "$WORK" | tail -1)")
written() { if [ -r "/sys/class/block/$DEV/stat" ]; then awk '{print $7}' "/sys/class/block/$DEV/stat"; else echo 0; fi; }

# Alternating rounds, cold page cache before each run, output on disk (sync included):
#   cosnap export (manifest with a SHA-256 of every file);
#   qemu-img convert of the same three snapshot disks, in parallel (the peer);
#   the same convert followed by sha256sum of the outputs (the peer with a manifest).
fulls=(); qemus=(); qemu_shas=(); pair_ratios=()
for ((r = 1; r <= ROUNDS; r++)); do
  rm -rf qemu; mkdir qemu; cold
  t0=$(now)
  for i in 1 2 3; do qemu-img convert -f qcow2 -O qcow2 images/vm$i.qcow2 qemu/vm$i.qcow2 & done; wait
  sync; t1=$(now)
  sha256sum qemu/*.qcow2 > qemu/manifest; sync; t2=$(now)
  qemus+=("$(secs "$t0" "$t1")"); qemu_shas+=("$(secs "$t0" "$t2")")
  rm -rf qemu; cold
  w0=$(written); t0=$(now)
  /usr/bin/time -v -o full.time $BIN $D --json export "$s1" "$WORK/out" --wait --subdirectory > full-$r.json
  sync; t1=$(now); full_mib=$(( ($(written) - w0) / 2048 ))
  fulls+=("$(secs "$t0" "$t1")")
  pair_ratios+=("$(echo "${fulls[-1]} / ${qemus[-1]}" | bc -l)")
  # Keep only round 1's package (the differentials' base): 3 GiB a round fills a disk.
  if [ "$r" -gt 1 ]; then rm -rf "$(package_of full-$r.json)"; fi
  printf 'round %d: cosnap %.2f s, qemu-img convert %.2f s (+ sha256sum %.2f s)\n' "$r" "${fulls[-1]}" "${qemus[-1]}" "${qemu_shas[-1]}"
done
full=$(min "${fulls[@]}"); qemu=$(min "${qemus[@]}"); qemu_sha=$(min "${qemu_shas[@]}")
$BIN export verify "$(package_of full-1.json)" >/dev/null

# 1 % of the disk changed: 1 MiB at 41 places spread over each 4 GiB disk.
for v in "${vms[@]}"; do
  for ((k = 0; k < 41; k++)); do $BIN $D vm write "$v" --disk 0 --offset $(( k * 99 * MIB + 5 * MIB )) --length $MIB --pattern 0xEE; done
done
s2=$($BIN $D --json snapshot create "$coll" --type recovery | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
diffs=()
for ((r = 1; r <= ROUNDS; r++)); do
  cold
  w0=$(written); t0=$(now)
  /usr/bin/time -v -o diff.time $BIN $D --json export "$s2" "$WORK/out" --wait --subdirectory --base "$s1" > diff-$r.json
  sync; t1=$(now); diff_mib=$(( ($(written) - w0) / 2048 ))
  diffs+=("$(secs "$t0" "$t1")")
  if [ "$r" -gt 1 ]; then rm -rf "$(package_of diff-$r.json)"; fi
done
diff=$(min "${diffs[@]}")
$BIN export verify "$(package_of diff-1.json)" >/dev/null

echo "$ROUNDS alternating rounds, page cache dropped before each run:"
printf 'full export (3 × 4 GiB, 25 %% data): cosnap best %.2f s (median %.2f), qemu-img convert best %.2f s (median %.2f); ratio: median of the per-round ratios %.2f, best to best %.2f (target <= 0.80); against convert + sha256sum (best %.2f s) %.2f; peak RSS %s KiB\n' \
  "$full" "$(median "${fulls[@]}")" "$qemu" "$(median "${qemus[@]}")" "$(median "${pair_ratios[@]}")" \
  "$(echo "$full / $qemu" | bc -l)" "$qemu_sha" "$(echo "$full / $qemu_sha" | bc -l)" "$(rss_of full.time)"
printf 'differential export (1 %% changed): best %.2f s (median %.2f); ratio to the full export: median to median %.3f, best to best %.3f (target <= 0.05); peak RSS %s KiB\n' \
  "$diff" "$(median "${diffs[@]}")" "$(echo "$(median "${diffs[@]}") / $(median "${fulls[@]}")" | bc -l)" \
  "$(echo "$diff / $full" | bc -l)" "$(rss_of diff.time)"
if [ "$full_mib" -gt 0 ]; then
  printf 'device writes (%s): full export %d MiB, differential %d MiB (ratio %.3f: the floor of the time ratio when disk-bound)\n' \
    "$DEV" "$full_mib" "$diff_mib" "$(echo "$diff_mib / $full_mib" | bc -l)"
fi
