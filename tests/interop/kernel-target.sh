#!/usr/bin/env bash
# A reference target for checking the harness itself: Linux's own NVMe/TCP
# target (nvmet-tcp) in a second QEMU guest, behind the same command line as
# nvmf-tpc, so that
#
#   tests/interop/run.sh tests/interop/kernel-target.sh
#
# runs the whole interop test against the kernel's target. If a run against
# nvmf-tpc fails and this one passes, the difference is in nvmf-tpc.
#
#   kernel-target.sh serve --listen 127.0.0.1:PORT --allow-any-host \
#       --subsystem NQN --namespace ram:SIZE [--cores N]
#
# The namespace is a brd RAM disk in that guest. The listener on 127.0.0.1:PORT
# is QEMU's (hostfwd), added through the monitor only once nvmet is ready, so
# "the port accepts" means "the target is up", as with the real binary.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${INTEROP_CACHE:-/var/cache/nvmf-tpc-interop}"
die() { echo "kernel-target: $*" >&2; exit 1; }

[ "${1:-}" = serve ] || die "usage: $0 serve --listen 127.0.0.1:PORT --allow-any-host --subsystem NQN --namespace ram:SIZE"
shift
LISTEN="" NQN="" NS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --listen) LISTEN="$2"; shift 2 ;;
    --subsystem) NQN="$2"; shift 2 ;;
    --namespace) NS="$2"; shift 2 ;;
    --cores) shift 2 ;;
    --allow-any-host) shift ;;
    *) die "unknown argument $1" ;;
  esac
done
HOST="${LISTEN%:*}" PORT="${LISTEN##*:}"
[ "$HOST" = 127.0.0.1 ] || die "listens on 127.0.0.1 only"
case "$NS" in
  ram:*[Mm]) SIZE_KIB=$(( ${NS:4:-1} * 1024 )) ;;
  ram:*[Gg]) SIZE_KIB=$(( ${NS:4:-1} * 1024 * 1024 )) ;;
  *) die "namespace must be ram:<N>M or ram:<N>G" ;;
esac

"$HERE/setup.sh" >&2
# shellcheck source=/dev/null
. "$CACHE/current.env"
MODDIR="$(dirname "$KERNEL")/../lib/modules/$KVER"

WORK="$(mktemp -d /tmp/nvmf-tpc-kernel-target.XXXXXX)"
QPID=""
cleanup() {
  [ -z "$QPID" ] || kill "$QPID" 2>/dev/null || true
  [ -n "${KERNEL_TARGET_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

# The guest's /init: modules, network, RAM disk, nvmet through configfs.
# (usr/lib: a directory named lib in this archive would replace the base's
# lib -> usr/lib symlink when the kernel unpacks it.)
mkdir -p "$WORK/ov/usr/lib/modules/$KVER/kernel/drivers/nvme/target"
cp "$MODDIR"/kernel/drivers/nvme/target/{nvmet,nvmet-tcp}.ko "$WORK/ov/usr/lib/modules/$KVER/kernel/drivers/nvme/target/"
cat > "$WORK/ov/init" <<EOF
#!/bin/sh
export PATH=/usr/sbin:/usr/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
K=/lib/modules/$KVER
while read -r m; do insmod "\$K/\${m#\?}" 2>/dev/null; done < /etc/interop-modules
insmod \$K/kernel/drivers/nvme/target/nvmet.ko && insmod \$K/kernel/drivers/nvme/target/nvmet-tcp.ko || echo NVMET-FAIL
rmmod brd; insmod \$K/kernel/drivers/block/brd.ko rd_nr=1 rd_size=$SIZE_KIB
mount -t configfs configfs /sys/kernel/config
ip link set lo up; ip link set eth0 up; ip addr add 10.0.2.15/24 dev eth0
cd /sys/kernel/config/nvmet
mkdir "subsystems/$NQN" && echo 1 > "subsystems/$NQN/attr_allow_any_host"
mkdir "subsystems/$NQN/namespaces/1"
echo /dev/ram0 > "subsystems/$NQN/namespaces/1/device_path"
echo 1 > "subsystems/$NQN/namespaces/1/enable"
mkdir ports/1
echo tcp > ports/1/addr_trtype; echo ipv4 > ports/1/addr_adrfam
echo 10.0.2.15 > ports/1/addr_traddr; echo 4420 > ports/1/addr_trsvcid
ln -s "/sys/kernel/config/nvmet/subsystems/$NQN" ports/1/subsystems/ && echo NVMET-READY || echo NVMET-FAIL
while :; do sleep 3600; done
EOF
chmod 755 "$WORK/ov/init"
(cd "$WORK/ov" && find . -mindepth 1 | cpio -o -H newc --quiet -R 0:0) | gzip -1 > "$WORK/ov.cpio.gz"
cat "$INITRD_BASE" "$WORK/ov.cpio.gz" > "$WORK/initrd.img"

# QEMU with its monitor on a FIFO, so that the port forward can be added later.
# restrict=on: this guest reaches nothing; only the forwarded port reaches it.
mkfifo "$WORK/monitor"
qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
  -machine pc -accel tcg,thread=multi -cpu max -smp 2 -m 1024 \
  -kernel "$KERNEL" -initrd "$WORK/initrd.img" -append "console=ttyS0 panic=-1 quiet" \
  -serial "file:$WORK/serial.log" -monitor stdio \
  -netdev user,id=n0,ipv6=off,restrict=on -device virtio-net-pci,netdev=n0,romfile= \
  < "$WORK/monitor" > "$WORK/monitor.log" 2>&1 &
QPID=$!
exec 3> "$WORK/monitor"

for i in $(seq 600); do
  kill -0 "$QPID" 2>/dev/null || die "QEMU exited: $(cat "$WORK/monitor.log")"
  grep -qs NVMET-FAIL "$WORK/serial.log" && die "nvmet setup failed: $(tr -d '\r' < "$WORK/serial.log")"
  grep -qs NVMET-READY "$WORK/serial.log" && break
  [ "$i" -lt 600 ] || die "nvmet not ready after 60 s"
  sleep 0.1
done
echo "hostfwd_add n0 tcp:127.0.0.1:$PORT-10.0.2.15:4420" >&3
echo "kernel-target: nvmet-tcp ready, forwarded from 127.0.0.1:$PORT" >&2
wait "$QPID"
