#!/usr/bin/env bash
# Installs and caches everything the interop test needs, idempotently:
#   * Debian packages: QEMU, nvme-cli, fio, e2fsprogs, busybox-static, ...
#   * Debian's stock kernel (the version linux-image-amd64 points at), unpacked,
#     with a modules.dep made by depmod (the package ships none);
#   * a base initramfs (cpio newc, gzip) with busybox, the kernel modules the
#     NVMe/TCP host needs (in dependency order), nvme-cli, fio, e2fsprogs and
#     coreutils dd with their shared libraries.
# run.sh appends a small per-run cpio (/init, /test.sh, settings) to the base.
#
# Output: $INTEROP_CACHE/current.env, read by run.sh (KVER, KERNEL, INITRD_BASE).
# A second run only checks and is quick (about a second).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${INTEROP_CACHE:-/var/cache/nvmf-tpc-interop}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "setup: $*" >&2; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, mknod)"

# --- 1. Debian packages --------------------------------------------------------
# qemu-system-x86 pulls seabios and ipxe-qemu (virtio-net option ROM) as hard deps.
# tshark (with dumpcap) decodes the matrix's packet capture on the host.
PACKAGES=(qemu-system-x86 nvme-cli fio e2fsprogs busybox-static kmod cpio
          coreutils gzip iproute2 python3 tshark)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
fi

# --- 2. The kernel ----------------------------------------------------------------
# linux-image-amd64 is a metapackage; its Depends names the real image package,
# e.g. linux-image-6.1.0-48-amd64 (= 6.1.172-1). INTEROP_KERNEL_PKG overrides.
resolve_kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
KPKG="${INTEROP_KERNEL_PKG:-$(resolve_kernel_pkg)}"
if [ -z "$KPKG" ]; then              # no package lists yet on a fresh machine
  apt-get update
  KPKG="$(resolve_kernel_pkg)"
fi
[ -n "$KPKG" ] || die "cannot resolve the kernel package behind linux-image-amd64"

# Downloads and unpacks $KPKG into $CACHE/kernel/<release>; sets KVER and KDIR.
fetch_kernel() {
  KVER="${KPKG#linux-image-}"                     # e.g. 6.1.0-48-amd64
  KDIR="$CACHE/kernel/$KVER"                      # the unpacked package's root
  [ -f "$KDIR/.complete" ] && return 0
  log "downloading and unpacking $KPKG"
  local tmp
  tmp="$(mktemp -d "$CACHE/kernel/dl.XXXXXX")"
  chown _apt "$tmp" 2>/dev/null || true           # apt downloads as user _apt
  if ! (cd "$tmp" && apt-get download "$KPKG"); then
    rm -rf "$tmp"
    return 1
  fi
  rm -rf "$KDIR"
  dpkg-deb -x "$tmp"/"$KPKG"_*.deb "$KDIR"
  rm -rf "$tmp"
  depmod -b "$KDIR" "$KVER"                       # the package ships no modules.dep
  touch "$KDIR/.complete"
}
mkdir -p "$CACHE/kernel"
if ! fetch_kernel; then
  # Stale lists can name a version the archive no longer has.
  apt-get update
  KPKG="${INTEROP_KERNEL_PKG:-$(resolve_kernel_pkg)}"
  fetch_kernel || die "cannot download $KPKG"
fi
KERNEL="$KDIR/boot/vmlinuz-$KVER"
MODDIR="$KDIR/lib/modules/$KVER"
[ -f "$KERNEL" ] && [ -f "$MODDIR/modules.dep" ] || die "bad kernel cache at $KDIR"

# --- 3. Base initramfs --------------------------------------------------------------
# Modules to load, in this order, each after its dependencies (resolved below
# from modules.dep). The crypto "generic" ones come first so that crc-t10dif,
# crc64-rocksoft, ext4 and jbd2 find their algorithms when they initialise
# (there is no udev/modprobe to load them on demand). A leading '?' marks a
# module that may fail to load (crc32c-intel needs SSE4.2 in the guest CPU).
MODULES=(
  crc32c_generic '?crc32c-intel' libcrc32c crct10dif_generic crc64_rocksoft_generic
  virtio_pci virtio_net        # NIC (QEMU -device virtio-net-pci)
  configfs
  nvme-tcp                     # pulls nvme-fabrics, nvme-core, t10-pi, crc64, ...
  ext4                         # pulls jbd2, mbcache, crc16
  loop brd                     # brd: RAM disk for the self-test without a target
)
# Tools copied from the host with their shared libraries.
BINARIES=(/usr/sbin/nvme /usr/bin/fio /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/bin/dd)

# The fixed host identity of the guest.
HOSTID="6e1d4f3a-0b1e-4c5a-9f4e-1a2b3c4d5e6f"
HOSTNQN="nqn.2014-08.org.nvmexpress:uuid:$HOSTID"

# The cache key covers this script, the kernel and the versions of the tools.
key_input() {
  cat "$HERE/setup.sh"
  echo "$KVER"
  dpkg-query -W -f='${Package} ${Version}\n' nvme-cli libnvme1 fio e2fsprogs \
    busybox-static coreutils libc6 2>/dev/null
}
KEY="$(key_input | sha256sum | cut -c1-16)"
INITRD_BASE="$CACHE/initramfs-base-$KEY.cpio.gz"

# Depth-first: dependencies of a module (from modules.dep) before the module.
declare -A MOD_SEEN=()
ORDERED=()
mod_path() {  # module name -> path relative to $MODDIR ('-' and '_' are the same)
  local want="${1//-/_}"
  awk -F: -v want="$want" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko(\..*)?$/, "", n);
         gsub(/-/, "_", n); if (n == want) { print $1; exit } }' "$MODDIR/modules.dep"
}
add_module_path() {
  local path="$1" dep
  [ -n "${MOD_SEEN[$path]:-}" ] && return 0
  MOD_SEEN[$path]=1
  for dep in $(awk -F: -v p="$path" '$1 == p { print $2; exit }' "$MODDIR/modules.dep"); do
    add_module_path "$dep"
  done
  ORDERED+=("$path")
}

build_initramfs() {
  local stage optional=() m name path f lib
  stage="$(mktemp -d "$CACHE/stage.XXXXXX")"
  STAGE="$stage"   # removed by the EXIT trap

  # Merged-/usr layout, like the host, so ldd's paths are valid inside.
  mkdir -p "$stage"/{usr/bin,usr/sbin,usr/lib,usr/lib64,dev,proc,sys,tmp,run,mnt,root,etc/nvme}
  ln -s usr/bin "$stage/bin"; ln -s usr/sbin "$stage/sbin"
  ln -s usr/lib "$stage/lib"; ln -s usr/lib64 "$stage/lib64"
  mknod -m 600 "$stage/dev/console" c 5 1
  mknod -m 666 "$stage/dev/null" c 1 3

  # busybox with a symlink per applet (the real tools copied below win).
  cp /bin/busybox "$stage/usr/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ -e "$stage/usr/bin/$a" ] || ln -s busybox "$stage/usr/bin/$a"
  done

  # Dynamic tools, their libraries (ldd's resolved paths) and the loader.
  for f in "${BINARIES[@]}"; do
    rm -f "$stage$f"; cp -L "$f" "$stage$f"
    for lib in $(ldd "$f" | awk '/=>/ && $3 ~ /^\// { print $3 } /^\t\// { print $1 }'); do
      mkdir -p "$stage$(dirname "$lib")"
      [ -e "$stage$lib" ] || cp -L "$lib" "$stage$lib"
    done
  done
  ln -sf mke2fs "$stage/usr/sbin/mkfs.ext4"
  cp /etc/mke2fs.conf "$stage/etc/"

  # Kernel modules, plus a modules.dep for them (busybox modprobe can then
  # serve the kernel's own request_module calls).
  for m in "${MODULES[@]}"; do
    name="${m#\?}"
    path="$(mod_path "$name")"
    [ -n "$path" ] || die "module $name not found in $KVER"
    [ "$name" != "$m" ] && optional+=("$path")
    add_module_path "$path"
  done
  local kmods="$stage/lib/modules/$KVER"
  mkdir -p "$kmods"
  : > "$stage/etc/interop-modules"
  for path in "${ORDERED[@]}"; do
    mkdir -p "$kmods/$(dirname "$path")"
    cp "$MODDIR/$path" "$kmods/$path"
    if printf '%s\n' "${optional[@]}" | grep -qx "$path"; then
      echo "?$path" >> "$stage/etc/interop-modules"
    else
      echo "$path" >> "$stage/etc/interop-modules"
    fi
  done
  cp "$MODDIR"/modules.builtin* "$MODDIR/modules.order" "$kmods/"
  depmod -b "$stage" "$KVER"
  echo "$KVER" > "$stage/etc/interop-kver"

  # The NVMe host identity nvme-cli uses.
  echo "$HOSTNQN" > "$stage/etc/nvme/hostnqn"
  echo "$HOSTID" > "$stage/etc/nvme/hostid"
  echo "root:x:0:0:root:/root:/bin/sh" > "$stage/etc/passwd"
  echo "root:x:0:" > "$stage/etc/group"

  log "packing $(du -sh "$stage" | cut -f1) into $INITRD_BASE"
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
    | gzip -6 > "$INITRD_BASE.tmp"
  mv "$INITRD_BASE.tmp" "$INITRD_BASE"
}
STAGE=""
trap '[ -z "$STAGE" ] || rm -rf "$STAGE"' EXIT

if [ ! -f "$INITRD_BASE" ]; then
  log "building base initramfs for $KVER"
  build_initramfs
  # Drop base images of older keys.
  find "$CACHE" -maxdepth 1 -name 'initramfs-base-*.cpio.gz' ! -name "$(basename "$INITRD_BASE")" -delete
fi

cat > "$CACHE/current.env.tmp" <<EOF
KVER='$KVER'
KERNEL='$KERNEL'
INITRD_BASE='$INITRD_BASE'
EOF
mv "$CACHE/current.env.tmp" "$CACHE/current.env"
log "ready: kernel $KVER, $(du -h "$INITRD_BASE" | cut -f1) base initramfs"
