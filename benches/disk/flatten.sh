#!/usr/bin/env bash
# Benchmark (not a test): flatten a 4 GiB-virtual image with 25 % data, and a 2-layer
# chain, into the same format — `cosnap disk convert` vs `qemu-img convert`, qcow2 and
# vhdx (vhdx chain: cosnap only, qemu cannot open .avhdx).
#
# Each timing is "until the output is durable": the command, then `sync FILE`
# (cosnap fsyncs its outputs itself; qemu-img convert writes with cache=unsafe and does not).
# Page cache is left warm (same for both tools); RUNS (default 3) alternating runs per tool,
# best kept. Peak RSS from /usr/bin/time -v.
#
# Usage: benches/disk/flatten.sh [COSNAP_BIN] [WORKDIR]
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
COSNAP=${1:-$here/target/release/cosnap}
WORK=${2:-$(mktemp -d /var/tmp/cosnap-bench.XXXXXX)}
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
[ -x "$COSNAP" ] || { echo "build first: cargo build --release -p cosnap ($COSNAP missing)" >&2; exit 1; }

# qemu-io commands writing 4 MiB of pattern every 16 MiB over [start, 4 GiB) with step 16 MiB
# × stride: stride 1 = 25 % data, stride 2 starting at 0 / 8 MiB... = two halves for a chain.
writes() { # $1 first offset MiB, $2 step MiB
  local off=$1 i=1
  while [ "$off" -lt 4096 ]; do
    printf -- "-c\0write -P %d %dM 4M\0" $(( (i % 250) + 1 )) "$off"
    off=$(( off + $2 )); i=$(( i + 1 ))
  done
}

secs() { # run "$@", print elapsed seconds (with sync of the last arg's output file in $OUT)
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  sync "$OUT"
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}

rss_kib() { # peak RSS of "$@" in KiB
  /usr/bin/time -v "$@" 2>&1 >/dev/null | awk -F: '/Maximum resident/ {gsub(/ /,"",$2); print $2}'
}

report() { # name cosnap_s qemu_s rss
  if [ -n "$3" ]; then
    printf "%-28s cosnap %6.2f s   qemu-img %6.2f s   ratio %.2f   cosnap peak RSS %s MiB\n" \
      "$1" "$2" "$3" "$(echo "$2 / $3" | bc -l)" "$(( $4 / 1024 ))"
  else
    printf "%-28s cosnap %6.2f s   qemu-img    n/a       ratio  n/a   cosnap peak RSS %s MiB\n" \
      "$1" "$2" "$(( $4 / 1024 ))"
  fi
}

cd "$WORK"
echo "work dir: $WORK"
# --- qcow2 single image: 256 × 4 MiB = 1 GiB of data in 4 GiB ---
qemu-img create -q -f qcow2 single.qcow2 4G
writes 0 16 | xargs -0 qemu-io -f qcow2 single.qcow2 >/dev/null
# --- qcow2 chain: base holds half, overlay the other half (plus overlaps) ---
qemu-img create -q -f qcow2 base.qcow2 4G
writes 0 32 | xargs -0 qemu-io -f qcow2 base.qcow2 >/dev/null
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
writes 16 32 | xargs -0 qemu-io -f qcow2 top.qcow2 >/dev/null
sync

RUNS=${RUNS:-3}
min() { printf "%s\n" "$@" | sort -g | head -1; }

bench() { # name src fmt [qemu-too] — RUNS alternating runs each, best time kept
  local name=$1 src=$2 fmt=$3 qemu=${4:-yes} cs=() qs=() r i
  for i in $(seq "$RUNS"); do
    rm -f "c.$fmt" "q.$fmt"; sync
    OUT=c.$fmt; cs+=("$(secs "$COSNAP" disk convert "$src" "c.$fmt" --format "$fmt")")
    if [ "$qemu" = yes ]; then
      sync
      OUT=q.$fmt; qs+=("$(secs qemu-img convert -O "$fmt" "$src" "q.$fmt")")
      qemu-img compare -q "c.$fmt" "q.$fmt" || echo "!! $name: outputs differ"
    fi
  done
  rm -f "c.$fmt"; sync
  r=$(rss_kib "$COSNAP" disk convert "$src" "c.$fmt" --format "$fmt")
  report "$name" "$(min "${cs[@]}")" "$( [ "$qemu" = yes ] && min "${qs[@]}" )" "$r"
  echo "    runs: cosnap ${cs[*]}${qs:+ / qemu-img ${qs[*]}}"
  rm -f "c.$fmt" "q.$fmt"
}

bench "qcow2 4G/25% single" single.qcow2 qcow2
bench "qcow2 2-layer chain" top.qcow2 qcow2

# --- vhdx: same data converted by qemu (dynamic, spec-standard NOT_PRESENT blocks) ---
if qemu-img convert -O vhdx -o subformat=dynamic,block_state_zero=off single.qcow2 single.vhdx 2>/dev/null \
   && "$COSNAP" disk info single.vhdx >/dev/null 2>&1; then
  bench "vhdx 4G/25% single" single.vhdx vhdx
  # vhdx chain made by cosnap (qemu cannot create or open .avhdx).
  qemu-img convert -O vhdx -o subformat=dynamic,block_state_zero=off base.qcow2 vbase.vhdx
  if "$COSNAP" disk create vtop.avhdx --format vhdx --parent vbase.vhdx >/dev/null 2>&1; then
    off=16
    while [ $off -lt 4096 ]; do
      "$COSNAP" disk write vtop.avhdx --offset ${off}M --length 4M --pattern 0x5a
      off=$(( off + 32 ))
    done
    bench "vhdx 2-layer chain" vtop.avhdx vhdx no
  else
    echo "vhdx chain: skipped (cosnap cannot create a VHDX child here)"
  fi
else
  echo "vhdx: skipped (cosnap cannot read VHDX here)"
fi
