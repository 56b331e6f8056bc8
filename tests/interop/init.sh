#!/bin/sh
# /init of the guest (PID 1, busybox sh). Mounts the pseudo file systems,
# loads the kernel modules in dependency order (busybox insmod resolves none),
# brings up eth0 on QEMU's user-mode network, runs /test.sh, prints the
# result marker on the serial console and powers the VM off.
export PATH=/usr/sbin:/usr/bin
export HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
exec </dev/console >/dev/console 2>&1

# Print the verdict (if given) and power off. An exiting /init would panic the
# kernel instead (which, with panic=-1 and -no-reboot, also ends QEMU).
finish() {
  echo
  [ -n "$1" ] && echo "INTEROP-FAIL: $1"
  sync
  poweroff -f
  sleep 60   # poweroff -f does not return; this only guards against surprises
}

uptime_s() { cut -d' ' -f1 /proc/uptime; }
echo "GUEST: init at $(uptime_s)s, kernel $(uname -r)"

# Settings written by run.sh: MODE, TARGET, PORT, NQN, ...
[ -f /etc/interop.env ] || finish "no /etc/interop.env in the initramfs"
. /etc/interop.env

KVER="$(cat /etc/interop-kver)"
while read -r m; do
  optional=""
  case "$m" in \?*) optional=1; m="${m#\?}";; esac
  if ! insmod "/lib/modules/$KVER/$m" 2>/tmp/insmod.err; then
    # Already there (built in or loaded as a dependency) is fine.
    grep -q 'File exists' /tmp/insmod.err && continue
    if [ -n "$optional" ]; then
      echo "GUEST: optional module $m not loaded: $(cat /tmp/insmod.err)"
    else
      cat /tmp/insmod.err
      finish "insmod $m"
    fi
  fi
done < /etc/interop-modules
mount -t configfs configfs /sys/kernel/config
echo "GUEST: modules loaded at $(uptime_s)s"

# Network: static address on QEMU's user-mode net (10.0.2.2 is the host's
# 127.0.0.1). Deliberately no default route: the guest may reach 10.0.2.0/24
# only, so nothing it does can leave for another address.
i=0
while [ ! -e /sys/class/net/eth0 ]; do
  i=$((i + 1)); [ "$i" -gt 50 ] && finish "no eth0 (virtio-net did not probe)"
  sleep 0.1
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
echo "GUEST: eth0 up at $(uptime_s)s: $(ip -4 -o addr show dev eth0 | awk '{print $4}')"

# /test.sh prints INTEROP-PASS or INTEROP-FAIL itself and leaves /run/interop.verdict.
sh /test.sh
rc=$?
[ -f /run/interop.verdict ] || finish "test script exited $rc without a verdict"
finish ""
