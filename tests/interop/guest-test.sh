#!/bin/sh
# Guest side of the interop test (busybox sh), installed as /test.sh.
#
#   sh /test.sh            runs every step of $MODE in order, each under a timeout
#   sh /test.sh do_NAME    runs one step (how the runner invokes them)
#
# MODE=nvme      the real test against the target at $TARGET:$PORT ($NQN):
#                discover, connect, identify, O_DIRECT data patterns, fio verify,
#                ext4 round trip, disconnect, dmesg check.
# MODE=selftest  checks the harness without a target: the host's HTTP server
#                at $TARGET:$PORT is reachable, the modules are loaded, the tools
#                run, and the data/fio/ext4 steps pass on a RAM disk.
#
# Every step prints "STEP: name"; the run ends with "INTEROP-PASS" or
# "INTEROP-FAIL: <step>: <reason>", and /run/interop.verdict is left for /init.
. /etc/interop.env
TARGET="${TARGET:-10.0.2.2}"
MODE="${MODE:-nvme}"
STATE=/run/interop            # facts handed from one step to the next
mkdir -p "$STATE"

MiB=1048576
now() { cut -d' ' -f1 /proc/uptime; }
fail() { echo "  error: $*"; exit 1; }     # inside a step
dev() { cat "$STATE/dev"; }

# ---------------------------------------------------------------- steps ----

do_discover() {
  nvme discover -t tcp -a "$TARGET" -s "$PORT" > "$STATE/discover.txt" 2>&1
  rc=$?
  cat "$STATE/discover.txt"
  [ "$rc" -eq 0 ] || fail "nvme discover exited $rc"
  grep -q "subnqn: *$NQN\$" "$STATE/discover.txt" || fail "$NQN not in the discovery log"
}

do_connect() {
  # Never connect-all: the discovery log names the target's own 127.0.0.1.
  nvme connect -t tcp -a "$TARGET" -s "$PORT" -n "$NQN" \
    --nr-io-queues=2 --ctrl-loss-tmo=5 --reconnect-delay=1 || fail "nvme connect exited $?"
  # Wait for the controller and its first namespace's block device.
  i=0
  while :; do
    for c in /sys/class/nvme/nvme*; do
      [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$NQN" ] && basename "$c" > "$STATE/ctrl"
    done
    for b in /sys/block/nvme*n1; do
      case "$b" in *c*n1) continue;; esac              # hidden multipath paths
      [ -b "/dev/${b##*/}" ] && [ "$(cat "$b/size")" -gt 0 ] && echo "/dev/${b##*/}" > "$STATE/dev"
    done
    [ -s "$STATE/ctrl" ] && [ -s "$STATE/dev" ] && break
    i=$((i + 1)); [ "$i" -gt 100 ] && fail "no controller/namespace 20 s after connect"
    sleep 0.2
  done
  echo "  controller $(cat "$STATE/ctrl"), namespace $(dev)"
  dmesg | grep -E 'nvme.*(queues|new ctrl|creating)' | tail -n 5
}

do_list() {
  nvme list || fail "nvme list"
  nvme list-subsys || fail "nvme list-subsys"
}

do_id_ctrl() {
  nvme id-ctrl "/dev/$(cat "$STATE/ctrl")" > "$STATE/id-ctrl.txt" || fail "nvme id-ctrl"
  grep -E '^(vid|ssvid|sn|mn|fr|mdts|cntlid|ver|oacs|nn|oncs|vwc|sgls|subnqn|ioccsz|iorcsz|icdoff|maxcmd|kas) ' \
    "$STATE/id-ctrl.txt"
  grep -q "^subnqn *: *$NQN\$" "$STATE/id-ctrl.txt" || fail "id-ctrl subnqn is not $NQN"
}

do_id_ns() {
  nvme id-ns "$(dev)" > "$STATE/id-ns.txt" || fail "nvme id-ns"
  grep -E '^(nsze|ncap|nuse|nsfeat|nlbaf|flbas|dlfeat|nguid|eui64|lbaf)' "$STATE/id-ns.txt"
  nsze=$(awk '$1 == "nsze" { print $3 }' "$STATE/id-ns.txt")
  [ -n "$nsze" ] && [ $((nsze)) -gt 0 ] || fail "nsze is 0"
  bytes=$(blockdev --getsize64 "$(dev)")
  echo "  block device: $bytes bytes, $(blockdev --getss "$(dev)")-byte blocks"
  [ -z "$NS_BYTES" ] || [ "$bytes" = "$NS_BYTES" ] || fail "size $bytes, expected $NS_BYTES"
}

# Writes distinct random data to several regions with O_DIRECT, then reads all
# of them back (O_DIRECT) and compares, so a write that lands in the wrong
# place is caught too.
do_data() {
  d="$(dev)"
  size=$(blockdev --getsize64 "$d")
  lbs=$(blockdev --getss "$d")
  dd if=/dev/urandom of=/tmp/pattern bs=$MiB count=8 status=none || fail "urandom"
  # offset:length pairs: 4 KiB at 0, an odd run of blocks, 64 KiB, 1 MiB,
  # 4 MiB (larger than most MDTS, so split by the host), the last 64 KiB but
  # one block, and the very last block.
  regions="0:4096 $((lbs * 9)):$((lbs * 3)) $((3 * 65536)):65536 $((8 * MiB)):$MiB"
  regions="$regions $((size / 5 / MiB * MiB)):$((4 * MiB))"
  regions="$regions $((size - 65536 - lbs)):65536 $((size - lbs)):$lbs"
  poff=0
  : > "$STATE/regions"
  for r in $regions; do
    off=${r%%:*}; len=${r##*:}
    dd if=/tmp/pattern of="$d" bs="$len" count=1 skip="$poff" seek="$off" \
      iflag=skip_bytes oflag=seek_bytes,direct conv=notrunc status=none \
      || fail "O_DIRECT write of $len bytes at $off"
    echo "$off $len $poff" >> "$STATE/regions"
    poff=$((poff + len))
  done
  while read -r off len poff; do
    want=$(dd if=/tmp/pattern bs="$len" count=1 skip="$poff" iflag=skip_bytes status=none | sha256sum | cut -c1-64)
    got=$(dd if="$d" bs="$len" count=1 skip="$off" iflag=skip_bytes,direct status=none | sha256sum | cut -c1-64) \
      || fail "O_DIRECT read of $len bytes at $off"
    echo "  offset $off length $len: $(echo "$got" | cut -c1-16)"
    [ "$got" = "$want" ] || fail "data mismatch at offset $off length $len (want $(echo "$want" | cut -c1-16))"
  done < "$STATE/regions"
}

do_flush() {
  nvme flush "$(dev)" || fail "nvme flush"
}

do_fio() {
  d="$(dev)"
  size=$(blockdev --getsize64 "$d")
  off=$((size / 2 / MiB * MiB))
  [ $((off + 64 * MiB)) -le "$size" ] || off=0
  fio --name=interop-verify --filename="$d" --ioengine=libaio --direct=1 \
      --rw=randwrite --bsrange=4k-128k --iodepth=16 --offset="$off" --size=64M \
      --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
      --group_reporting > "$STATE/fio.txt" 2>&1
  rc=$?
  # The summary lines; the whole output only on failure.
  if [ "$rc" -ne 0 ]; then cat "$STATE/fio.txt"; fail "fio exited $rc"; fi
  grep -E '^ *(write|read):|err=' "$STATE/fio.txt"
}

do_ext4() {
  d="$(dev)"
  mkfs.ext4 -F -q "$d" || fail "mkfs.ext4"
  mkdir -p /mnt/t
  mount -t ext4 "$d" /mnt/t || fail "mount"
  mkdir /mnt/t/dir
  dd if=/dev/urandom of=/mnt/t/small bs=4096 count=1 status=none &&
  dd if=/dev/urandom of=/mnt/t/medium bs=$MiB count=1 status=none &&
  dd if=/dev/urandom of=/mnt/t/large bs=$MiB count=24 status=none || fail "writing files"
  for i in $(seq 1 40); do echo "file $i $(date)" > "/mnt/t/dir/f$i"; done
  (cd /mnt/t && sha256sum small medium large dir/*) > /tmp/sums
  sync
  umount /mnt/t || fail "umount"
  mount -t ext4 "$d" /mnt/t || fail "remount"
  (cd /mnt/t && sha256sum -c /tmp/sums) > /tmp/sums.check 2>&1 \
    || { cat /tmp/sums.check; fail "checksums differ after remount"; }
  echo "  $(wc -l < /tmp/sums) files intact after remount"
  umount /mnt/t || fail "second umount"
  e2fsck -f -n "$d" || fail "e2fsck found problems"
}

do_disconnect() {
  ctrl="$(cat "$STATE/ctrl")"
  out=$(nvme disconnect -n "$NQN" 2>&1)
  rc=$?
  echo "$out"
  [ "$rc" -eq 0 ] || fail "nvme disconnect exited $rc"
  echo "$out" | grep -q "disconnected 1 controller" || fail "did not disconnect one controller"
  i=0
  while [ -e "/sys/class/nvme/$ctrl" ]; do
    i=$((i + 1)); [ "$i" -gt 50 ] && fail "$ctrl still there 10 s after disconnect"
    sleep 0.2
  done
}

do_dmesg() {
  dmesg > "$STATE/dmesg.txt"
  grep -iE 'nvme' "$STATE/dmesg.txt" | tail -n 20
  if grep -E 'BUG|WARNING|Oops|hung task|Call Trace' "$STATE/dmesg.txt"; then
    fail "the kernel complained (see above)"
  fi
}

# Self-test steps (no target needed).
do_net() {
  # (busybox-static's wget segfaults in glibc's static resolver; nc does not)
  printf 'GET /token HTTP/1.0\r\n\r\n' | nc "$TARGET" "$PORT" > /tmp/token \
    || fail "nc $TARGET $PORT"
  tail -n 1 /tmp/token | grep -qx "$TOKEN" || { cat /tmp/token; fail "token not received"; }
  echo "  fetched the host's token through $TARGET:$PORT"
}

do_modules() {
  for m in nvme_tcp nvme_fabrics nvme_core ext4 jbd2 crc32c_generic virtio_net brd; do
    [ -d "/sys/module/$m" ] || fail "module $m not loaded"
  done
  [ -c /dev/nvme-fabrics ] || fail "no /dev/nvme-fabrics"
  lsmod | awk 'NR > 1 { printf "%s ", $1 } END { print "" }'
}

do_tools() {
  nvme version || fail "nvme"
  fio --version || fail "fio"
  mke2fs -V 2>&1 | head -n 1
  dd --version | head -n 1
  cat /etc/nvme/hostnqn
}

do_ramdisk() {
  # Replace the default RAM disks (16 x 16 MiB) with one of 256 MiB.
  rmmod brd || fail "rmmod brd"
  insmod "/lib/modules/$(uname -r)/kernel/drivers/block/brd.ko" rd_nr=1 rd_size=262144 \
    || fail "insmod brd"
  [ -b /dev/ram0 ] || fail "no /dev/ram0"
  echo /dev/ram0 > "$STATE/dev"
  echo "  /dev/ram0: $(blockdev --getsize64 /dev/ram0) bytes"
}

# ---------------------------------------------------------------- runner ---

verdict() { echo; echo "$1"; touch /run/interop.verdict; }

# step NAME TIMEOUT_S: run do_NAME in a child shell under a timeout.
step() {
  name=$1; secs=$2
  echo "STEP: $name"
  t0=$(now)
  timeout "$secs" sh /test.sh "do_$name"
  rc=$?
  dt=$(awk "BEGIN { printf \"%.1f\", $(now) - $t0 }")
  if [ "$rc" -eq 0 ]; then
    echo "  ok: $name (${dt}s)"
    SUMMARY="$SUMMARY $name=${dt}s"
    return 0
  fi
  case "$rc" in
    124|137|143) why="timed out after ${secs}s" ;;
    *) why="exit $rc" ;;
  esac
  echo "--- guest dmesg (last 40 lines) ---"
  dmesg | tail -n 40
  verdict "INTEROP-FAIL: $name: $why"
  exit 1
}

if [ -n "$1" ]; then        # one step, in the child shell
  "$1"
  exit $?
fi

echo "GUEST: mode=$MODE target=$TARGET:$PORT nqn=$NQN"
SUMMARY=""
t_start=$(now)
case "$MODE" in
  nvme)
    step discover 30
    step connect 40
    step list 15
    step id_ctrl 15
    step id_ns 15
    step data 90
    step flush 15
    step fio 150
    step ext4 120
    step disconnect 30
    step dmesg 10
    ;;
  selftest)
    step net 20
    step modules 10
    step tools 20
    step ramdisk 10
    step data 90
    step fio 150
    step ext4 120
    step dmesg 10
    ;;
  *)
    verdict "INTEROP-FAIL: unknown MODE '$MODE'"; exit 1 ;;
esac
echo "GUEST: steps:$SUMMARY; total $(awk "BEGIN { printf \"%.1f\", $(now) - $t_start }")s"
verdict "INTEROP-PASS"
