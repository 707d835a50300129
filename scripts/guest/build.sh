#!/usr/bin/env bash
# build.sh [OUT_DIR]  (default: target/guest of the repository)
# Builds the busybox test guest from Debian packages into OUT_DIR: vmlinuz (the cloud kernel,
# fetched with apt-get download and extracted, nothing installed in /boot) and initrd.gz
# (busybox-static, virtio modules and the record-writing /init beside this script).
# Installs the packages it needs first. Rebuilds the initramfs when /init changed; never commit
# the output.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-$HERE/../../target/guest}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
bash "$HERE/install-packages.sh"

if [ -f "$OUT/vmlinuz" ] && [ -f "$OUT/initrd.gz" ] && [ "$OUT/initrd.gz" -nt "$HERE/init" ] \
   && [ -d "$OUT/kernel-root" ]; then
  exit 0
fi

if [ ! -d "$OUT/kernel-root" ]; then
  package=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$package" ] || { echo "build.sh: apt knows no linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
  work=$(mktemp -d); chmod 755 "$work"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -qq "$package" && dpkg-deb -x ./*.deb root)
  rm -rf "$OUT/kernel-root.tmp"
  # keep only the drivers the initramfs takes (the whole module tree is ~90 MB)
  (cd "$work/root" && find lib/modules -path '*/drivers/virtio/*' -o -path '*/drivers/block/virtio_blk*' |
     cpio -pdm --quiet "$OUT/kernel-root.tmp")
  cp "$work"/root/boot/vmlinuz-* "$OUT/vmlinuz"
  mv "$OUT/kernel-root.tmp" "$OUT/kernel-root"
fi

sh "$HERE/build-initramfs.sh" "$OUT/kernel-root" "$HERE/init" "$OUT/initrd.gz.tmp"
mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"
ls -l "$OUT/vmlinuz" "$OUT/initrd.gz"
