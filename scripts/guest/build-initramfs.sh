#!/bin/sh
# build-initramfs.sh KERNEL_ROOT INIT OUT.cpio.gz
# Packs busybox-static, the kernel's virtio block modules and INIT into a gzip'd newc initramfs.
# KERNEL_ROOT is a tree extracted from a Debian linux-image-*-cloud-amd64 .deb (dpkg-deb -x); its
# kernel builds virtio as modules, so they are copied flat into /lib/modules for /init to insmod.
set -eu
KROOT=$1; INIT=$2; OUT=$3
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
mkdir -p "$W/bin" "$W/sbin" "$W/proc" "$W/sys" "$W/dev" "$W/lib/modules" "$W/tmp"
cp /bin/busybox "$W/bin/busybox"
# busybox --list names busybox itself: linking it would overwrite the binary
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$W/bin/$a"; done
chmod 755 "$W"
MD=$(ls -d "$KROOT"/lib/modules/*)/kernel
for m in virtio/virtio_ring virtio/virtio virtio/virtio_pci_modern_dev virtio/virtio_pci_legacy_dev \
         virtio/virtio_pci block/virtio_blk; do
  f=$MD/drivers/$m.ko
  if [ -f "$f" ]; then cp "$f" "$W/lib/modules/"
  elif [ -f "$f.xz" ]; then xz -dc "$f.xz" > "$W/lib/modules/$(basename "$f")"
  else echo "build-initramfs: no module $m in $KROOT" >&2; exit 1
  fi
done
cp "$INIT" "$W/init"; chmod 755 "$W/init"
(cd "$W" && find . | cpio -o -H newc --quiet | gzip -1) > "$OUT"
