#!/bin/sh
# Guest side of the interop test (busybox sh), installed as /test.sh.
#
#   sh /test.sh            runs every step of $MODE in order, each with a time limit
#   sh /test.sh do_NAME    runs one step (how the runner invokes them)
#
# MODE=nvme      the real test against the target at $TARGET:$PORT ($NQN):
#                discover, connect, identify, O_DIRECT data patterns, flush,
#                deallocate/write zeroes, fio verify, ext4 round trip,
#                disconnect, dmesg check.
# MODE=selftest  checks the harness without a target: the host's HTTP server
#                at $TARGET:$PORT is reachable, the modules are loaded, the tools
#                run, and the data/fio/ext4 steps pass on a RAM disk.
#
# Every step prints "STEP: name", then "ok: name" or "FAILED: name" after its
# error. The run ends with "INTEROP-PASS" or "INTEROP-FAIL: <failed steps>",
# and /run/interop.verdict is left for /init.
. /etc/interop.env
TARGET="${TARGET:-10.0.2.2}"
MODE="${MODE:-nvme}"
STATE=/run/interop            # facts handed from one step to the next
mkdir -p "$STATE"

MiB=1048576
# Debian's busybox runs its own applet for a bare name even when PATH has the
# real tool (FEATURE_SH_STANDALONE); a full path runs the real one. Coreutils
# dd: aligned buffers for O_DIRECT.
DD=/usr/bin/dd
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
  # DIGESTS=1 adds header and data digests (CRC32C) to every PDU.
  digests=""
  [ "$DIGESTS" = 1 ] && digests="--hdr-digest --data-digest"
  # shellcheck disable=SC2086
  nvme connect -t tcp -a "$TARGET" -s "$PORT" -n "$NQN" \
    --nr-io-queues=2 --ctrl-loss-tmo=5 --reconnect-delay=1 $digests || fail "nvme connect exited $?"
  # Wait for the controller and its first namespace's block device.
  i=0
  while :; do
    for c in /sys/class/nvme/nvme*; do
      [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$NQN" ] && basename "$c" > "$STATE/ctrl"
    done
    for b in /sys/block/nvme*n1; do
      n="${b##*/}"
      case "$n" in nvme*c*n1) continue;; esac           # hidden multipath paths
      [ -b "/dev/$n" ] && [ "$(cat "$b/size")" -gt 0 ] && echo "/dev/$n" > "$STATE/dev"
    done
    [ -s "$STATE/ctrl" ] && [ -s "$STATE/dev" ] && break
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
      ls -l /sys/block /sys/class/nvme/ /dev/nvme* 2>&1
      fail "no controller/namespace 20 s after connect"
    fi
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
  $DD if=/dev/urandom of=/tmp/pattern bs=$MiB count=8 status=none || fail "urandom"
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
    $DD if=/tmp/pattern of="$d" bs="$len" count=1 skip="$poff" seek="$off" \
      iflag=skip_bytes oflag=seek_bytes,direct conv=notrunc status=none \
      || fail "O_DIRECT write of $len bytes at $off"
    echo "$off $len $poff" >> "$STATE/regions"
    poff=$((poff + len))
  done
  while read -r off len poff; do
    want=$($DD if=/tmp/pattern bs="$len" count=1 skip="$poff" iflag=skip_bytes status=none | sha256sum | cut -c1-64)
    $DD if="$d" of=/tmp/readback bs="$len" count=1 skip="$off" iflag=skip_bytes,direct status=none \
      || fail "O_DIRECT read of $len bytes at $off"
    got=$(sha256sum /tmp/readback | cut -c1-64)
    echo "  offset $off length $len: $(echo "$got" | cut -c1-16)"
    [ "$got" = "$want" ] || fail "data mismatch at offset $off length $len (want $(echo "$want" | cut -c1-16))"
  done < "$STATE/regions"
}

do_flush() {
  nvme flush "$(dev)" || fail "nvme flush"
}

# Deallocate (blkdiscard -> Dataset Management) and Write Zeroes, when the
# controller advertises them (ONCS bits 2 and 3). After a deallocate the range
# must read as zeroes only if DLFEAT says so; after Write Zeroes it must.
do_trim() {
  d="$(dev)"
  ctrl="/dev/$(cat "$STATE/ctrl")"
  lbs=$(blockdev --getss "$d")
  oncs=$(nvme id-ctrl "$ctrl" | awk '$1 == "oncs" { print $3 }')
  dlfeat=$(nvme id-ns "$d" | awk '$1 == "dlfeat" { print $3 }')
  zero_sum() { $DD if=/dev/zero bs="$1" count=1 status=none | sha256sum | cut -c1-64; }
  read_sum() { $DD if="$d" bs="$2" count=1 skip="$1" iflag=skip_bytes,direct status=none | sha256sum | cut -c1-64; }
  fill() { $DD if=/dev/urandom of="$d" bs="$2" count=1 seek="$1" oflag=seek_bytes,direct conv=notrunc status=none; }
  off=$((32 * MiB)) len=$MiB
  if [ $((oncs & 4)) -ne 0 ]; then
    fill "$off" "$len" || fail "write before deallocate"
    blkdiscard -o "$off" -l "$len" "$d" || fail "blkdiscard (Dataset Management, deallocate)"
    if [ $((dlfeat & 7)) -eq 1 ]; then
      [ "$(read_sum "$off" "$len")" = "$(zero_sum "$len")" ] || fail "deallocated range does not read as zeroes (DLFEAT $dlfeat)"
      echo "  deallocate: $len bytes at $off read back as zeroes"
    else
      echo "  deallocate: ok (DLFEAT $dlfeat: no zeroes promised)"
    fi
  else
    echo "  deallocate: not advertised (ONCS $oncs)"
  fi
  off=$((40 * MiB)) len=$((256 * 1024))
  if [ $((oncs & 8)) -ne 0 ]; then
    fill "$off" "$len" || fail "write before write-zeroes"
    nvme write-zeroes "$d" --start-block=$((off / lbs)) --block-count=$((len / lbs - 1)) \
      || fail "nvme write-zeroes"
    [ "$(read_sum "$off" "$len")" = "$(zero_sum "$len")" ] || fail "write-zeroes range does not read as zeroes"
    echo "  write zeroes: $len bytes at $off read back as zeroes"
  else
    echo "  write zeroes: not advertised (ONCS $oncs)"
  fi
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
  /usr/sbin/mkfs.ext4 -F -q "$d" || fail "mkfs.ext4"
  mkdir -p /mnt/t
  mount -t ext4 "$d" /mnt/t || fail "mount"
  mkdir /mnt/t/dir
  $DD if=/dev/urandom of=/mnt/t/small bs=4096 count=1 status=none &&
  $DD if=/dev/urandom of=/mnt/t/medium bs=$MiB count=1 status=none &&
  $DD if=/dev/urandom of=/mnt/t/large bs=$MiB count=24 status=none || fail "writing files"
  for i in $(seq 1 40); do echo "file $i $(date)" > "/mnt/t/dir/f$i"; done
  (cd /mnt/t && sha256sum small medium large dir/*) > /tmp/sums
  sync
  umount /mnt/t || fail "umount"
  mount -t ext4 "$d" /mnt/t || fail "remount"
  (cd /mnt/t && sha256sum -c /tmp/sums) > /tmp/sums.check 2>&1 \
    || { cat /tmp/sums.check; fail "checksums differ after remount"; }
  echo "  $(wc -l < /tmp/sums) files intact after remount"
  umount /mnt/t || fail "second umount"
  /usr/sbin/e2fsck -f -n "$d" || fail "e2fsck found problems"
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
  # A command the host considers valid must not fail, even one whose error a
  # tool tolerated (mke2fs carries on when its discard fails, for example).
  if grep -iE 'I/O error|I/O Cmd' "$STATE/dmesg.txt"; then
    fail "the target failed I/O commands (see above)"
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
  /usr/sbin/mke2fs -V 2>&1 | head -n 1
  $DD --version | head -n 1 | grep coreutils || fail "$DD is not coreutils dd"
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

diagnose() {
  echo "--- guest dmesg (last 40 lines) ---"
  dmesg | tail -n 40
}

# step NAME TIMEOUT_S [critical]: run do_NAME in a child shell. A failed step
# is recorded and the run goes on (so one run reports every failing step),
# unless it is critical (the steps after it depend on it). A watchdog ends the
# run with a FAIL (and powers off) when a step overruns, even if the step is
# stuck in the kernel where no signal reaches it.
FAILED=""
step() {
  name=$1; secs=$2; critical=${3:-}
  echo "STEP: $name"
  t0=$(now)
  sh /test.sh "do_$name" &
  pid=$!
  (
    sleep "$secs"
    echo "  $name: still running after ${secs}s"
    ps -o pid,stat,args 2>/dev/null | grep -v " \[" | tail -n 15   # no kernel threads
    diagnose
    verdict "INTEROP-FAIL: $name: timed out after ${secs}s${FAILED:+ (failed before:$FAILED)}"
    sync
    poweroff -f
  ) &
  watchdog=$!
  wait "$pid"
  rc=$?
  kill "$watchdog" 2>/dev/null
  dt=$(awk "BEGIN { printf \"%.1f\", $(now) - $t0 }")
  if [ "$rc" -eq 0 ]; then
    echo "  ok: $name (${dt}s)"
    SUMMARY="$SUMMARY $name=${dt}s"
    return 0
  fi
  diagnose
  echo "  FAILED: $name (exit $rc after ${dt}s)"
  SUMMARY="$SUMMARY $name=FAILED"
  FAILED="$FAILED $name"
  if [ -n "$critical" ]; then
    verdict "INTEROP-FAIL:$FAILED (stopped: the later steps need $name)"
    exit 1
  fi
}

if [ -n "$1" ]; then        # one step, in the child shell
  "$1"
  exit $?
fi

echo "GUEST: mode=$MODE target=$TARGET:$PORT nqn=$NQN digests=${DIGESTS:-0}"
SUMMARY=""
t_start=$(now)
case "$MODE" in
  nvme)
    step discover 30
    step connect 40 critical
    step list 15
    step id_ctrl 15
    step id_ns 15
    step data 60
    step flush 15
    step trim 30
    step fio 120
    step ext4 90
    step disconnect 30
    step dmesg 10
    ;;
  selftest)
    step net 20
    step modules 10
    step tools 20
    step ramdisk 10 critical
    step data 60
    step fio 120
    step ext4 90
    step dmesg 10
    ;;
  *)
    verdict "INTEROP-FAIL: unknown MODE '$MODE'"; exit 1 ;;
esac
echo "GUEST: steps:$SUMMARY; total $(awk "BEGIN { printf \"%.1f\", $(now) - $t_start }")s"
if [ -n "$FAILED" ]; then
  verdict "INTEROP-FAIL:$FAILED"
  exit 1
fi
verdict "INTEROP-PASS"
