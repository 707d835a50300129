#!/usr/bin/env bash
# Installs what running the test guests needs: qemu-system-x86 from <codename>-backports (the
# release qemu-utils comes from, so the two match), busybox-static, cpio, lz4 and socat.
# The backports source is derived from the machine's own Debian source (same URIs, same keyring);
# no mirror is named here. Idempotent: does nothing when everything is present.
set -euo pipefail

need_apt=()
command -v qemu-system-x86_64 >/dev/null || need_apt+=(qemu-system-x86)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx insmod || need_apt+=(busybox-static)
command -v cpio >/dev/null || need_apt+=(cpio)
command -v lz4 >/dev/null || need_apt+=(lz4)
command -v socat >/dev/null || need_apt+=(socat)
[ ${#need_apt[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
. /etc/os-release
CODENAME=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
BACKPORTS=$CODENAME-backports

# Prints one apt source for $BACKPORTS copied from the machine's first non-security Debian
# source for $CODENAME: a deb822 stanza from *.sources, else a one-line entry from *.list.
derive_backports_source() {
  local stanza
  stanza=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v code="$CODENAME" -v bp="$BACKPORTS" '
    BEGIN { RS = ""; ORS = "\n" }
    /URIs:[^\n]*debian/ && !/security/ && $0 ~ ("Suites:[^\n]*" code "([ \n]|$)") && !done {
      sub(/Suites:[^\n]*/, "Suites: " bp); print; done = 1
    }')
  if [ -z "$stanza" ]; then
    stanza=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v code="$CODENAME" -v bp="$BACKPORTS" '
      $1 == "deb" && $0 !~ /security/ && !done {
        for (i = 2; i <= NF; i++) if ($i == code) { $i = bp; print; done = 1; break }
      }')
  fi
  printf '%s\n' "$stanza"
}

if ! grep -rqs -- "$BACKPORTS" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  stanza=$(derive_backports_source)
  [ -n "$stanza" ] || { echo "install-packages: no Debian $CODENAME source to derive $BACKPORTS from" >&2; exit 1; }
  case "$stanza" in
    deb\ *) echo "$stanza" | $SUDO tee /etc/apt/sources.list.d/cosnap-backports.list >/dev/null ;;
    *) echo "$stanza" | $SUDO tee /etc/apt/sources.list.d/cosnap-backports.sources >/dev/null ;;
  esac
fi

echo "installing Debian packages: ${need_apt[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
  -t "$BACKPORTS" "${need_apt[@]}" >/dev/null
command -v qemu-system-x86_64 >/dev/null || { echo "install-packages: qemu-system-x86_64 still missing" >&2; exit 1; }
