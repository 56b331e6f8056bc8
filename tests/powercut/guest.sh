#!/bin/sh
# /test.sh of the power-cut guest (tests/power_cut.rs), run by the interop
# /init once the network is up: the target serves a file on ext4 on the
# virtio disk whose every write and flush QEMU logs (blklogwrites). It runs
# until the host kills the VM; the host rebuilds the disk a power cut would
# leave from the log.
. /etc/interop.env
KVER="$(cat /etc/interop-kver)"
fail() { echo "POWERCUT-FAIL: $1"; exit 1; }

insmod "/lib/modules/$KVER/$VIRTIO_BLK" 2>/tmp/insmod.err \
  || grep -q 'File exists' /tmp/insmod.err || fail "insmod virtio_blk: $(cat /tmp/insmod.err)"
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1)); [ "$i" -gt 100 ] && fail "no /dev/vda"
  sleep 0.1
done
mount -t ext4 /dev/vda /mnt || fail "mount /dev/vda"
echo "POWERCUT: serving /mnt/ns.img"
# FAULT names a fault to inject (src/fault.rs), to show the test bites.
env $FAULT /nvmf-tpc serve --namespace /mnt/ns.img --listen 0.0.0.0:4420 \
  --allow-any-host --cores 2 --log-level warn
fail "the target exited ($?)"
