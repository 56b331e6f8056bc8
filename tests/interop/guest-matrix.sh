#!/bin/sh
# Guest side of the interop matrix (busybox sh), installed as /test.sh.
#
#   sh /test.sh               runs the cells named in $CELLS ("name:seconds ..."),
#                             in order, each with a time limit
#   sh /test.sh __run NAME    runs one cell, its kernel-log check and the
#                             cleanup (how the runner invokes a cell)
#
# Every cell starts from a clean guest (no NVMe controller, nothing mounted,
# two CPUs online) and leaves one behind, so cells stay independent although
# they share one boot. The console carries machine-readable markers for
# matrix.py:
#
#   CELL-BEGIN name
#   CELL-END name PASS|FAIL|TIMEOUT seconds
#   MATRIX-DONE                (all cells ran)
#
# A cell that overruns its limit cannot always be stopped (it may sleep in
# the kernel), so the watchdog prints TIMEOUT and powers the VM off;
# matrix.py boots a new VM for the cells that did not run.
#
# The settings come from /etc/interop.env (written by matrix.py): ports,
# subsystem NQNs, the control channel's port.
. /etc/interop.env
TARGET="${TARGET:-10.0.2.2}"
STATE=/run/interop
mkdir -p "$STATE"

MiB=1048576
KiB=1024
DISC_NQN=nqn.2014-08.org.nvmexpress.discovery
# Debian's busybox runs its own applet for a bare name even when PATH has the
# real tool; a full path runs the real one. Coreutils dd: aligned O_DIRECT buffers.
DD=/usr/bin/dd
TRACE=/sys/kernel/tracing

# What the target advertises (src/wire/identify.rs), pinned: the checks of
# these features run because the target must have them, so a target that
# drops a bit fails instead of skipping the check.
ONCS_WANT=$((0x0d))     # Compare, Dataset Management, Write Zeroes
LPA_WANT=$((0x06))      # Commands Supported and Effects log; extended data (log page offsets)
DLFEAT_WANT=$((0x09))   # RAM and file namespaces: deallocated blocks read zeroes; Write Zeroes may deallocate

now() { cut -d' ' -f1 /proc/uptime; }
hex() { printf '0x%x' "$1"; }
say() { echo "  $*"; }
fail() { echo "  error: $*"; exit 1; }          # inside a cell
run() { echo "  \$ $*" >&2; "$@"; }            # show a command, then run it

# ------------------------------------------------------------------ helpers --

# The host's control channel (matrix.py, 127.0.0.1:$CTL_PORT, seen here as
# $TARGET): one line in, one line out. "restart NAME", "kill NAME",
# "start NAME [WAIT_S]", "ping".
ctl() {
  echo "  ctl> $*"
  reply=$(printf '%s\n' "$*" | timeout 200 nc "$TARGET" "$CTL_PORT" 2>&1)
  echo "  ctl< $reply"
  case "$reply" in ok*) return 0 ;; *) return 1 ;; esac
}

# Tells the host that a cell begins or ends (it cuts the target logs there).
mark() {
  printf 'mark %s %s\n' "$1" "$2" | timeout 20 nc "$TARGET" "$CTL_PORT" > /dev/null 2>&1
}

# dmesg lines logged at or after uptime $1.
dmesg_since() {
  dmesg | awk -v t="$1" '{ s = $0; sub(/^\[ */, "", s); split(s, a, "]");
                          if (a[1] + 0 >= t + 0) print }'
}

# The (first) controller whose subsystem NQN is $1, e.g. nvme0.
ctrl_for() {
  for c in /sys/class/nvme/nvme*; do
    [ -e "$c/subsysnqn" ] || continue
    [ "$(cat "$c/subsysnqn")" = "$1" ] && { echo "${c##*/}"; return 0; }
  done
  return 1
}

# The block device of namespace $2 of controller $1 (native multipath names
# the disk after the subsystem: /dev/nvme<subsys>n<nsid>).
ns_dev() {
  for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ -e "$s/$1" ] || continue
    for n in "$s"/nvme*n"$2"; do
      [ -d "$n" ] && { echo "/dev/${n##*/}"; return 0; }
    done
  done
  return 1
}

# Waits for namespace $2 of controller $1 to have a non-empty block device;
# prints its path.
wait_ns() {
  i=0
  while :; do
    d=$(ns_dev "$1" "$2") && [ -b "$d" ] && [ "$(blockdev --getsize64 "$d" 2>/dev/null || echo 0)" -gt 0 ] \
      && { echo "$d"; return 0; }
    i=$((i + 1)); [ "$i" -gt 100 ] && return 1
    sleep 0.2
  done
}

# connect PORT NQN [nvme connect options]: connects (never connect-all: the
# discovery log names the target's own 127.0.0.1) and waits for a live
# controller; sets CTRL (nvmeX) and DEV (its namespace 1, if it has one).
connect() {
  port=$1 nqn=$2; shift 2
  echo "  \$ nvme connect -t tcp -a $TARGET -s $port -n $nqn $*"
  nvme connect -t tcp -a "$TARGET" -s "$port" -n "$nqn" "$@" > /tmp/connect.txt 2>&1
  rc=$?
  sed 's/^/    /' /tmp/connect.txt
  [ "$rc" = 0 ] || fail "nvme connect exited $rc"
  i=0
  while :; do
    CTRL=$(ctrl_for "$nqn") && [ "$(cat "/sys/class/nvme/$CTRL/state")" = live ] && break
    i=$((i + 1))
    [ "$i" -gt 100 ] && fail "no live controller for $nqn 20 s after nvme connect"
    sleep 0.2
  done
  DEV=""
  if [ "$nqn" != "$DISC_NQN" ]; then
    DEV=$(wait_ns "$CTRL" 1) || fail "namespace 1 of $CTRL has no block device 20 s after connect"
  fi
  say "controller $CTRL ($(cat /sys/class/nvme/"$CTRL"/queue_count) queues incl. admin, sqsize $(cat /sys/class/nvme/"$CTRL"/sqsize)), namespace 1: ${DEV:-none}"
}

# The value of field $2 in nvme-cli's "name : value" output in file $1.
field() {
  sed -n "s/^$2[[:space:]]*:[[:space:]]*//p" "$1" | head -n 1 | sed 's/[[:space:]]*$//'
}

sum() { sha256sum | cut -c1-64; }
# Bytes $2..$2+$3 of file or device $1 (O_DIRECT when $4 = direct).
slice() {
  if [ "${4:-}" = direct ]; then
    $DD if="$1" bs="$3" count=1 skip="$2" iflag=skip_bytes,direct status=none
  else
    $DD if="$1" bs="$3" count=1 skip="$2" iflag=skip_bytes status=none
  fi
}
# put SRC SRC_OFF DEV DEV_OFF LEN [direct]: copy a byte range.
put() {
  if [ "${6:-}" = direct ]; then
    $DD if="$1" of="$3" bs="$5" count=1 skip="$2" seek="$4" iflag=skip_bytes \
      oflag=seek_bytes,direct conv=notrunc status=none
  else
    $DD if="$1" of="$3" bs="$5" count=1 skip="$2" seek="$4" iflag=skip_bytes \
      oflag=seek_bytes conv=notrunc status=none
  fi
}

# Compares file $1 (read back) with the model $2; names the first difference.
same() {
  if ! cmp "$1" "$2" > /tmp/cmp.out 2>&1; then
    cat /tmp/cmp.out
    return 1
  fi
}

# data_check DEV: O_DIRECT writes of patterns at aligned and unaligned offsets
# (block aligned, but not aligned to 128 KiB, the MDTS), sizes from one block
# to 4 MiB (the host splits those beyond the MDTS), overwrites, and the
# namespace's last block; then reads everything back, in one piece and in
# pieces that straddle the patches, and compares with a model kept in RAM, so
# a write that lands in the wrong place (a changed neighbour) is caught too.
data_check() {
  d=$1
  size=$(blockdev --getsize64 "$d") lbs=$(blockdev --getss "$d")
  base=$((16 * MiB)) region=$((16 * MiB))
  [ "$size" -ge $((base + region + 4 * MiB)) ] || fail "$d is too small ($size bytes)"
  say "$d: $size bytes, $lbs-byte blocks; region $base+$region"
  $DD if=/dev/urandom of=/tmp/model bs=$MiB count=16 status=none || fail urandom
  $DD if=/dev/urandom of=/tmp/src bs=$MiB count=16 status=none || fail urandom
  $DD if=/tmp/model of="$d" bs=$MiB seek=$((base / MiB)) oflag=direct conv=notrunc status=none \
    || fail "O_DIRECT write of the 16 MiB background pattern"
  K128=$((128 * KiB))
  # offset:length within the region
  patches="0:$lbs
$((K128 - lbs)):$((2 * lbs))
$((2 * K128 + lbs)):$K128
$((4 * K128 - lbs)):$((K128 + 2 * lbs))
$((MiB + 3 * lbs)):$((MiB + 5 * lbs))
$((3 * MiB - lbs)):$((4 * MiB))
$((8 * MiB + 7 * lbs)):$((3 * lbs))
$((K128 - lbs)):$lbs
$((5 * MiB + 64 * KiB)):$((64 * KiB))
$((region - lbs)):$lbs"
  soff=0
  for p in $patches; do
    off=${p%%:*} len=${p##*:}
    put /tmp/src "$soff" "$d" $((base + off)) "$len" direct \
      || fail "O_DIRECT write of $len bytes at $((base + off))"
    put /tmp/src "$soff" /tmp/model "$off" "$len" || fail "model update"
    soff=$((soff + len))
  done
  say "wrote $(echo "$patches" | wc -l) patches ($soff bytes, 1 block to 4 MiB)"
  $DD if="$d" of=/tmp/back bs=$MiB count=16 skip=$((base / MiB)) iflag=direct status=none \
    || fail "O_DIRECT read of the region"
  same /tmp/back /tmp/model || fail "the region differs from the model after the patches"
  # Reads that start a block before each patch and end a block after it.
  for p in $patches; do
    off=${p%%:*} len=${p##*:}
    ro=$((off - lbs)); [ "$ro" -lt 0 ] && ro=0
    rl=$((off + len + lbs - ro)); [ $((ro + rl)) -gt "$region" ] && rl=$((region - ro))
    slice "$d" $((base + ro)) "$rl" direct > /tmp/piece || fail "O_DIRECT read of $rl bytes at $((base + ro))"
    slice /tmp/model "$ro" "$rl" > /tmp/piece.want
    same /tmp/piece /tmp/piece.want || fail "read of $rl bytes at $((base + ro)) differs"
  done
  say "unaligned reads around every patch match"
  # The namespace's end: 2 MiB of background, then its last block and the
  # 1 MiB that ends one block before it.
  toff=$((size - 2 * MiB))
  $DD if=/dev/urandom of=/tmp/tmodel bs=$MiB count=2 status=none
  put /tmp/tmodel 0 "$d" "$toff" $((2 * MiB)) direct || fail "O_DIRECT write of the last 2 MiB"
  put /tmp/src 0 "$d" $((size - lbs)) "$lbs" direct || fail "O_DIRECT write of the last block"
  put /tmp/src 0 /tmp/tmodel $((2 * MiB - lbs)) "$lbs"
  put /tmp/src "$lbs" "$d" $((size - MiB - lbs)) "$MiB" direct || fail "O_DIRECT write of 1 MiB before the last block"
  put /tmp/src "$lbs" /tmp/tmodel $((MiB - lbs)) "$MiB"
  slice "$d" "$toff" $((2 * MiB)) direct > /tmp/back || fail "O_DIRECT read of the last 2 MiB"
  same /tmp/back /tmp/tmodel || fail "the namespace's last 2 MiB differ"
  slice "$d" $((size - lbs)) "$lbs" direct > /tmp/piece || fail "O_DIRECT read of the last block"
  slice /tmp/tmodel $((2 * MiB - lbs)) "$lbs" > /tmp/piece.want
  same /tmp/piece /tmp/piece.want || fail "the last block differs"
  say "the last block and the last 2 MiB match"
  # The region once more: the writes at the end must not have touched it.
  $DD if="$d" of=/tmp/back bs=$MiB count=16 skip=$((base / MiB)) iflag=direct status=none
  same /tmp/back /tmp/model || fail "the region changed after the writes at the end"
  rm -f /tmp/model /tmp/src /tmp/back /tmp/tmodel /tmp/piece /tmp/piece.want
}

# fio_verify DEV NAME [fio options]: a verifying fio job; prints the summary,
# or everything on failure.
fio_verify() {
  d=$1 name=$2; shift 2
  echo "  \$ fio $name $*"
  fio --name="$name" --filename="$d" --ioengine=libaio --direct=1 \
      --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
      --group_reporting "$@" > /tmp/fio.txt 2>&1
  rc=$?
  if [ "$rc" -ne 0 ]; then cat /tmp/fio.txt; fail "fio $name exited $rc"; fi
  grep -E '^ *(write|read):|err=' /tmp/fio.txt | sed 's/^ */    /'
}

# ext4_check DEV: mkfs (discarding), mount, files, sync, umount, remount,
# checksums, e2fsck. Every step's exit status counts: a step that fails
# quietly (a file not written, a sync that lost data) must not pass for the
# ones after it.
ext4_check() {
  d=$1
  /usr/sbin/mkfs.ext4 -F "$d" > /tmp/mkfs.txt 2>&1 || { cat /tmp/mkfs.txt; fail "mkfs.ext4"; }
  grep -E 'Discarding|Creating filesystem' /tmp/mkfs.txt | sed 's/^/    /'
  # The target advertises Dataset Management (ONCS_WANT, checked in
  # identify), and mke2fs carries on silently when its discard fails.
  grep -q 'Discarding device blocks:.*done' /tmp/mkfs.txt \
    || { cat /tmp/mkfs.txt; fail "mkfs.ext4 did not discard (Dataset Management)"; }
  mkdir -p /mnt/t || fail "mkdir /mnt/t"
  mount -t ext4 "$d" /mnt/t || fail "mount"
  mkdir /mnt/t/dir || fail "mkdir on the file system"
  $DD if=/dev/urandom of=/mnt/t/small bs=4096 count=1 status=none &&
  $DD if=/dev/urandom of=/mnt/t/medium bs=$MiB count=1 status=none &&
  $DD if=/dev/urandom of=/mnt/t/large bs=$MiB count=24 status=none || fail "writing files"
  for i in $(seq 1 40); do
    echo "file $i $(date)" > "/mnt/t/dir/f$i" || fail "writing dir/f$i"
  done
  (cd /mnt/t && sha256sum small medium large dir/*) > /tmp/sums || fail "sha256sum of the files"
  [ "$(wc -l < /tmp/sums)" = 43 ] || fail "$(wc -l < /tmp/sums) sums, want 43 files"
  # syncfs, which reports a write-back error (plain sync cannot fail).
  sync -f /mnt/t || fail "sync -f /mnt/t"
  umount /mnt/t || fail "umount"
  mount -t ext4 "$d" /mnt/t || fail "remount"
  (cd /mnt/t && sha256sum -c /tmp/sums) > /tmp/sums.check 2>&1 \
    || { cat /tmp/sums.check; fail "checksums differ after remount"; }
  say "$(wc -l < /tmp/sums) files intact after remount"
  umount /mnt/t || fail "second umount"
  /usr/sbin/e2fsck -f -n "$d" > /tmp/fsck.txt 2>&1
  rc=$?
  sed 's/^/    /' /tmp/fsck.txt
  [ "$rc" = 0 ] || fail "e2fsck -f -n exited $rc"
}

# Number of I/O queues Linux reports for the connect that happened after $1.
queues_created() {
  dmesg_since "$1" | sed -n 's/.*creating \([0-9]*\) I\/O queues.*/\1/p' | tail -n 1
}

cpus_online() {
  for c in "$@"; do
    f=/sys/devices/system/cpu/cpu$c/online
    [ -e "$f" ] || return 1
    [ "$(cat "$f")" = 1 ] || echo 1 > "$f" || return 1
  done
}

# Keep Alive commands, from the nvme driver's tracepoints: the ones the host
# really sent and the target answered, instead of a guess from elapsed time.
# The events are enabled once, before the first cell, and stay enabled:
# switching a tracepoint patches kernel text and waits for every CPU to
# acknowledge an IPI, and under TCG such a wait, at a cell's end, twice never
# returned (one CPU in a soft lockup in sh, the other's timers stopped; the
# pcap and the keepalive cell, 2026-12-07).
# Cells only clear the buffer and switch recording (a flag) on and off.
ka_trace_setup() {
  [ -e "$TRACE/trace" ] || mount -t tracefs tracefs "$TRACE" || return 1
  [ -d "$TRACE/events/nvme/nvme_setup_cmd" ] || return 1
  echo 0 > "$TRACE/tracing_on"
  echo 'qid == 0 && opcode == 0x18' > "$TRACE/events/nvme/nvme_setup_cmd/filter" || return 1
  echo 'qid == 0' > "$TRACE/events/nvme/nvme_complete_rq/filter" || return 1
  echo 1 > "$TRACE/events/nvme/nvme_setup_cmd/enable"
  echo 1 > "$TRACE/events/nvme/nvme_complete_rq/enable"
}

# ka_trace_start clears the trace and records admin commands from then on.
ka_trace_start() {
  [ "$(cat "$TRACE/events/nvme/nvme_setup_cmd/enable" 2>/dev/null)" = 1 ] \
    || fail "the nvme trace events are not enabled (ka_trace_setup failed at the start)"
  echo 0 > "$TRACE/tracing_on"
  : > "$TRACE/trace"
  echo 1 > "$TRACE/tracing_on"
}

ka_trace_stop() {
  [ -e "$TRACE/tracing_on" ] || return 0
  echo 0 > "$TRACE/tracing_on"
}

# Keep Alives sent on controller $1 (nvmeX) since ka_trace_start that completed
# with status 0: "nvme_setup_cmd: nvme0: qid=0, cmdid=N, ... cmd=(nvme_admin_keep_alive ...)",
# then "nvme_complete_rq: nvme0: qid=0, cmdid=N, ..., status=0x0".
ka_count() {
  awk -v c="$1:" '
    { id = ""; st = ""; mine = 0
      for (i = 1; i <= NF; i++) {
        if ($i == c) mine = 1
        if ($i ~ /^cmdid=/) { id = $i; sub(/^cmdid=/, "", id); sub(/,$/, "", id) }
        if ($i ~ /^status=/) { st = $i; sub(/^status=/, "", st) }
      } }
    mine && /nvme_setup_cmd:/ && /keep_alive/ { ka[id] = 1 }
    mine && /nvme_complete_rq:/ && (id in ka) { delete ka[id]; if (st + 0 == 0) n++ }
    END { print n + 0 }' "$TRACE/trace"
}

# ka_idle CTRL N: leaves controller CTRL (nvmeX) idle for N times its
# negotiated KATO (long enough for a target that did not count Keep Alives
# to end it) and until N Keep Alives sent on it completed with success. A
# loaded machine gets up to 4 N KATO for that; the controller must stay live
# throughout.
ka_idle() {
  c=$1 n=$2
  kato=$(cat "/sys/class/nvme/$c/kato")
  [ "$kato" -gt 0 ] || fail "$c has no KATO"
  start=$(now)
  while :; do
    el=$(awk "BEGIN { print int($(now) - $start) }")
    got=$(ka_count "$c")
    st=$(cat "/sys/class/nvme/$c/state" 2>/dev/null)
    [ "$st" = live ] || fail "$c is '$st' after ${el}s idle ($got Keep Alives answered)"
    [ "$el" -ge $((n * kato)) ] && [ "$got" -ge "$n" ] && break
    [ "$el" -ge $((4 * n * kato)) ] \
      && fail "$got Keep Alives completed with success in ${el}s idle (KATO ${kato}s), want $n"
    sleep 1
  done
  say "$c idle ${el}s (KATO ${kato}s): $got Keep Alives completed with success"
}

# ---------------------------------------------------------------- cells ----

cell_discover() {
  for port in $MAIN_PORT $MAIN_PORT2; do
    nvme discover -t tcp -a "$TARGET" -s "$port" > "$STATE/disc.$port" 2>&1 \
      || { cat "$STATE/disc.$port"; fail "nvme discover through port $port exited $?"; }
  done
  cat "$STATE/disc.$MAIN_PORT"
  # One line per record: " key=value ..." (spaces in values become _).
  awk '/^=====Discovery Log Entry/ { if (n) print rec; n++; rec = "" }
       /^[a-z]+: / { k = $1; sub(/:$/, "", k); v = $0; sub(/^[a-z]+: */, "", v);
                     sub(/ *$/, "", v); gsub(/ /, "_", v); rec = rec " " k "=" v }
       END { if (n) print rec }' "$STATE/disc.$MAIN_PORT" > "$STATE/records"
  cmp -s "$STATE/disc.$MAIN_PORT" "$STATE/disc.$MAIN_PORT2" \
    || fail "the two listeners return different discovery logs"
  nrec=$(sed -n 's/.*Number of Records \([0-9]*\).*/\1/p' "$STATE/disc.$MAIN_PORT")
  want=0
  for nqn in $ALLOWED_NQNS; do
    for port in $MAIN_PORT $MAIN_PORT2; do
      want=$((want + 1))
      n=$(grep -c " subnqn=$nqn\( \|\$\)" "$STATE/records" | head -n 1)
      r=$(grep " subnqn=$nqn\( \|\$\)" "$STATE/records" | grep " trsvcid=$port\( \|\$\)")
      [ "$(echo "$r" | grep -c .)" = 1 ] || fail "want exactly one entry for $nqn on port $port"
      for kv in trtype=tcp adrfam=ipv4 subtype=nvme_subsystem traddr=127.0.0.1 sectype=none; do
        echo "$r" | grep -q " $kv\( \|\$\)" || fail "entry $nqn/$port: expected $kv in:$r"
      done
      echo "$r" | grep -qE ' treq=not_(specified|required)' || fail "entry $nqn/$port: treq in:$r"
      [ "$n" = 2 ] || fail "$nqn has $n entries, want one per listener (2)"
    done
  done
  [ "$nrec" = "$want" ] || fail "$nrec records, want $want (allowed subsystems x listeners)"
  [ "$(grep -c . "$STATE/records")" = "$want" ] || fail "parsed $(grep -c . "$STATE/records") entries, want $want"
  p1=$(grep " trsvcid=$MAIN_PORT " "$STATE/records" | sed 's/.* portid=\([0-9]*\).*/\1/' | sort -u)
  p2=$(grep " trsvcid=$MAIN_PORT2 " "$STATE/records" | sed 's/.* portid=\([0-9]*\).*/\1/' | sort -u)
  [ "$(echo "$p1" | wc -l)" = 1 ] && [ "$(echo "$p2" | wc -l)" = 1 ] && [ "$p1" != "$p2" ] \
    || fail "port ids: $MAIN_PORT -> '$p1', $MAIN_PORT2 -> '$p2' (want one distinct id per listener)"
  grep -q "$NQN_DENIED" "$STATE/disc.$MAIN_PORT" && fail "$NQN_DENIED (host not allowed) is listed"
  say "$want entries: $(echo "$ALLOWED_NQNS" | wc -w) allowed subsystems x 2 listeners; $NQN_DENIED not listed"
}

# A persistent discovery controller with KATO 5 s idles for 3 KATO, and until
# 3 Keep Alives were answered.
cell_discover_keepalive() {
  t0=$(now)
  ka_trace_start
  run nvme discover -t tcp -a "$TARGET" -s "$MAIN_PORT" --persistent --keep-alive-tmo=5 > /tmp/disc.txt 2>&1 \
    || { cat /tmp/disc.txt; fail "nvme discover --persistent"; }
  c=$(ctrl_for "$DISC_NQN") || fail "no persistent discovery controller"
  kato=$(cat "/sys/class/nvme/$c/kato")
  cntlid=$(cat "/sys/class/nvme/$c/cntlid")
  say "$c: discovery controller $cntlid, kato ${kato}s"
  [ "$kato" = 5 ] || fail "kato is $kato, asked 5"
  ka_idle "$c" 3
  st=$(cat "/sys/class/nvme/$c/state" 2>/dev/null)
  [ "$st" = live ] || fail "state '$st' after idling"
  [ "$(cat "/sys/class/nvme/$c/cntlid")" = "$cntlid" ] || fail "the controller was replaced"
  if dmesg_since "$t0" | grep -iE 'reset|reconnect|keep.alive|error recovery|timed out|Removing'; then
    fail "the discovery controller was reset or timed out while idle (above)"
  fi
  nvme discover -d "/dev/$c" > /tmp/disc2.txt 2>&1 || { cat /tmp/disc2.txt; fail "nvme discover -d /dev/$c"; }
  grep -q "subnqn: *$NQN_MAIN\$" /tmp/disc2.txt || fail "the log read after idling lacks $NQN_MAIN"
  say "live after 3 keep-alive periods and more; the log reads again through /dev/$c"
}

# Identify Controller of a discovery controller.
cell_discovery_id() {
  run nvme discover -t tcp -a "$TARGET" -s "$MAIN_PORT" --persistent > /dev/null 2>&1 || fail "nvme discover --persistent"
  c=$(ctrl_for "$DISC_NQN") || fail "no persistent discovery controller"
  nvme id-ctrl "/dev/$c" > /tmp/idc.txt || fail "nvme id-ctrl /dev/$c"
  grep -E '^(sn|mn|fr|mdts|cntlid|ver|cntrltype|lpa|maxcmd|kas|sgls|subnqn|ioccsz|iorcsz) ' /tmp/idc.txt | sed 's/^/    /'
  [ "$(field /tmp/idc.txt cntrltype)" = 2 ] || fail "cntrltype is not 2 (discovery)"
  [ "$(field /tmp/idc.txt subnqn)" = "$DISC_NQN" ] || fail "subnqn is not $DISC_NQN"
  for f in sn mn fr; do
    [ -n "$(field /tmp/idc.txt $f)" ] || fail "$f is blank (Linux nvmet reports its subsystem's serial, model and firmware revision on discovery controllers too)"
  done
}

cell_host_denied() {
  t0=$(now)
  echo "  \$ nvme connect -t tcp -a $TARGET -s $MAIN_PORT -n $NQN_DENIED"
  if nvme connect -t tcp -a "$TARGET" -s "$MAIN_PORT" -n "$NQN_DENIED" > /tmp/c.txt 2>&1; then
    cat /tmp/c.txt; fail "connect succeeded although the subsystem allows only another host"
  fi
  sed 's/^/    /' /tmp/c.txt
  ctrl_for "$NQN_DENIED" > /dev/null && fail "a controller for $NQN_DENIED exists"
  dmesg_since "$t0" | grep nvme
  dmesg_since "$t0" | grep -q "Connect for subsystem $NQN_DENIED is not allowed" \
    || fail "Linux did not report 'Connect for subsystem ... is not allowed' (Connect Invalid Host)"
  nvme discover -t tcp -a "$TARGET" -s "$MAIN_PORT" > /tmp/d.txt 2>&1 || fail "nvme discover"
  grep -q "$NQN_DENIED" /tmp/d.txt && fail "the discovery log lists $NQN_DENIED"
  say "refused with Connect Invalid Host; not in the discovery log"
}

# A Connect to an unknown NQN: Linux names the offending field when the
# target reports it (IATTR in bit 16, IPO in bits 15:0 of dword 0).
cell_bad_subnqn() {
  t0=$(now)
  bad="$NQN_PREFIX:no-such-subsystem"
  echo "  \$ nvme connect -t tcp -a $TARGET -s $MAIN_PORT -n $bad"
  if nvme connect -t tcp -a "$TARGET" -s "$MAIN_PORT" -n "$bad" > /tmp/c.txt 2>&1; then
    fail "connect to an unknown subsystem succeeded"
  fi
  sed 's/^/    /' /tmp/c.txt
  dmesg_since "$t0" | grep nvme
  dmesg_since "$t0" | grep -q "Connect Invalid Data Parameter, subsysnqn \"$bad\"" \
    || fail "Linux did not name the subsysnqn field (want: Connect Invalid Data Parameter, subsysnqn \"$bad\")"
}

# queue_io CTRL NJOBS IODEPTH: verifying random writes from NJOBS jobs, each
# on its own CPU and region, so that every queue carries I/O.
queue_io() {
  n=$2 qd=$3
  fio_verify "$DEV" queues --rw=randwrite --bs=4k --iodepth="$qd" --size=8M \
    --numjobs="$n" --offset_increment=8M --cpus_allowed="0-$(($(nproc) - 1))" \
    --cpus_allowed_policy=split
}

# check_queues T0 N: N I/O queues were created (dmesg) and are there (sysfs).
check_queues() {
  got=$(queues_created "$1")
  qc=$(cat "/sys/class/nvme/$CTRL/queue_count")
  dmesg_since "$1" | grep -E 'queues|clamping' | sed 's/^/    /'
  [ "$got" = "$2" ] || fail "Linux created '$got' I/O queues, want $2"
  [ "$qc" = $(($2 + 1)) ] || fail "queue_count $qc, want $(($2 + 1))"
}

cell_queues_default() {
  t0=$(now)
  connect "$MAIN_PORT" "$NQN_MAIN"
  check_queues "$t0" "$(nproc)"
  queue_io "$CTRL" "$(nproc)" 16
}

cell_queues_1() {
  t0=$(now)
  connect "$MAIN_PORT" "$NQN_MAIN" --nr-io-queues=1
  check_queues "$t0" 1
  queue_io "$CTRL" 2 16
}

# 8 I/O queues on a 2-core target: Linux makes at most one default (and one
# write) queue per online CPU, so two more CPUs come online for this cell.
cell_queues_8() {
  cpus_online 2 3 || fail "cannot bring CPUs 2 and 3 online"
  say "$(nproc) CPUs online"
  t0=$(now)
  connect "$MAIN_PORT" "$NQN_MAIN" --nr-io-queues=4 --nr-write-queues=4
  check_queues "$t0" 8
  # Reads (the verify pass) use the 4 read queues, writes the 4 default ones.
  queue_io "$CTRL" 4 16
}

# check_sqsize T0 WANT_SQSIZE [clamp message]
check_sqsize() {
  sq=$(cat "/sys/class/nvme/$CTRL/sqsize")
  dmesg_since "$1" | grep -E 'clamping|queues' | sed 's/^/    /'
  [ "$sq" = "$2" ] || fail "sqsize $sq, want $2"
  if [ -n "${3:-}" ]; then
    dmesg_since "$1" | grep -q "$3" || fail "no '$3' in dmesg"
  fi
}

cell_qsize_16() {
  t0=$(now)
  connect "$MAIN_PORT" "$NQN_MAIN" --queue-size=16
  check_sqsize "$t0" 15
  queue_io "$CTRL" 2 32           # more in flight than the queue holds
}

cell_qsize_128() {
  t0=$(now)
  connect "$MAIN_PORT" "$NQN_MAIN" --queue-size=128
  check_sqsize "$t0" 127
  queue_io "$CTRL" 2 128
}

# Asking for more entries than the target has: Linux clamps to CAP.MQES + 1.
cell_qsize_clamp() {
  t0=$(now)
  connect "$MAIN_PORT" "$NQN_MAIN" --queue-size=256
  check_sqsize "$t0" 127 "queue_size 256 > ctrl sqsize 128, clamping down"
  queue_io "$CTRL" 2 64
  nvme disconnect -n "$NQN_MAIN" > /dev/null || fail "disconnect"
  t0=$(now)
  connect "$QD64_PORT" "$NQN_QD" --queue-size=128         # target: --queue-depth 64
  check_sqsize "$t0" 63 "queue_size 128 > ctrl sqsize 64, clamping down"
  queue_io "$CTRL" 2 128
}

# A target with --queue-depth 16 (below the admin queue's 32 entries, which
# Linux always asks for and the discovery log's ASQSZ promises).
cell_qdepth_16() {
  t0=$(now)
  echo "  \$ nvme connect -t tcp -a $TARGET -s $QD16_PORT -n $NQN_QD"
  if ! nvme connect -t tcp -a "$TARGET" -s "$QD16_PORT" -n "$NQN_QD" > /tmp/c.txt 2>&1; then
    sed 's/^/    /' /tmp/c.txt
    dmesg_since "$t0" | grep nvme
    fail "cannot connect to a target with --queue-depth 16"
  fi
  CTRL=$(ctrl_for "$NQN_QD") || fail "no controller"
  DEV=$(wait_ns "$CTRL" 1) || fail "no namespace"
  check_sqsize "$t0" 15
  queue_io "$CTRL" 2 32
}

cell_identify() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  nvme id-ctrl "/dev/$CTRL" > /tmp/idc.txt || fail "nvme id-ctrl"
  grep -E '^(vid|sn|mn|fr|mdts|cntlid|ver|cntrltype|oacs|acl|aerl|lpa|elpe|sqes|cqes|maxcmd|nn|oncs|vwc|kas|sgls|subnqn|ioccsz|iorcsz|icdoff|msdbd) ' \
    /tmp/idc.txt | sed 's/^/    /'
  for f in sn mn fr; do [ -n "$(field /tmp/idc.txt $f)" ] || fail "$f is blank"; done
  [ "$(field /tmp/idc.txt subnqn)" = "$NQN_MAIN" ] || fail "subnqn is not $NQN_MAIN"
  [ "$(field /tmp/idc.txt cntrltype)" = 1 ] || fail "cntrltype is not 1 (I/O controller)"
  mdts=$(field /tmp/idc.txt mdts)
  [ "$mdts" -gt 0 ] && [ $((4096 << mdts)) = "$MAX_IO_BYTES" ] || fail "mdts $mdts is not $MAX_IO_BYTES bytes (4 KiB pages)"
  [ $(($(field /tmp/idc.txt sgls) & 3)) = 1 ] || fail "sgls does not advertise SGL support"
  [ $(($(field /tmp/idc.txt oncs))) = "$ONCS_WANT" ] || fail "oncs $(field /tmp/idc.txt oncs), want $(hex $ONCS_WANT)"
  [ $(($(field /tmp/idc.txt lpa))) = "$LPA_WANT" ] || fail "lpa $(field /tmp/idc.txt lpa), want $(hex $LPA_WANT)"
  [ $(($(field /tmp/idc.txt kas))) -ne 0 ] || fail "kas is 0 (keep alive not supported?)"
  [ $(($(field /tmp/idc.txt ioccsz))) -ge 4 ] || fail "ioccsz below 4 (64-byte SQE)"
  [ $(($(field /tmp/idc.txt iorcsz))) -ge 1 ] || fail "iorcsz below 1"
  [ $(($(field /tmp/idc.txt ver))) -ge $((0x10300)) ] || fail "ver below 1.3"
  [ $(($(field /tmp/idc.txt nn))) -ge 1 ] || fail "nn is 0"
  [ $(($(field /tmp/idc.txt maxcmd))) -ge 2 ] || fail "maxcmd below 2"
  nvme id-ns "$DEV" > /tmp/idn.txt || fail "nvme id-ns"
  grep -E '^(nsze|ncap|nuse|nsfeat|nlbaf|flbas|nmic|dlfeat|nguid|eui64|lbaf)' /tmp/idn.txt | sed 's/^/    /'
  [ $(($(field /tmp/idn.txt dlfeat))) = "$DLFEAT_WANT" ] || fail "dlfeat $(field /tmp/idn.txt dlfeat), want $(hex $DLFEAT_WANT)"
  nsze=$(($(field /tmp/idn.txt nsze))) ncap=$(($(field /tmp/idn.txt ncap)))
  lbads=$(sed -n 's/.*lbads:\([0-9]*\).*(in use).*/\1/p' /tmp/idn.txt)
  [ -n "$lbads" ] || fail "no LBA format in use"
  [ "$ncap" = "$nsze" ] || fail "ncap $ncap != nsze $nsze"
  [ $((nsze << lbads)) = "$MAIN_NS_BYTES" ] || fail "nsze $nsze << $lbads != $MAIN_NS_BYTES"
  [ $((1 << lbads)) = "$(blockdev --getss "$DEV")" ] || fail "block size"
  nguid=$(field /tmp/idn.txt nguid)
  echo "$nguid" | grep -q '[1-9a-f]' || fail "nguid is zero"
  nvme ns-descs "$DEV" > /tmp/nsd.txt || fail "nvme ns-descs"
  sed 's/^/    /' /tmp/nsd.txt
  [ "$(field /tmp/nsd.txt nguid)" = "$nguid" ] || fail "ns-descs nguid differs from id-ns"
  nvme list > /tmp/list.txt || fail "nvme list"
  sed 's/^/    /' /tmp/list.txt
  grep "^$DEV " /tmp/list.txt | grep -q "$(field /tmp/idc.txt sn)" || fail "nvme list lacks $DEV with its serial"
  nvme list-subsys > /tmp/ls.txt || fail "nvme list-subsys"
  sed 's/^/    /' /tmp/ls.txt
  grep -q "NQN=$NQN_MAIN" /tmp/ls.txt || fail "list-subsys lacks $NQN_MAIN"
  grep -q "$CTRL tcp traddr=$TARGET,trsvcid=$MAIN_PORT.* live" /tmp/ls.txt || fail "list-subsys lacks a live tcp path"
}

cell_logs() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  run nvme error-log "/dev/$CTRL" -e 4 > /tmp/el.txt || { cat /tmp/el.txt; fail "nvme error-log"; }
  grep -E 'Entry|error_count|status_field' /tmp/el.txt | sed 's/^/    /'
  run nvme smart-log "/dev/$CTRL" > /tmp/sl.txt || { cat /tmp/sl.txt; fail "nvme smart-log"; }
  sed 's/^/    /' /tmp/sl.txt
  cw=$(sed -n 's/^critical_warning[[:space:]]*:[[:space:]]*//p' /tmp/sl.txt)
  [ "$((cw))" = 0 ] || fail "critical_warning $cw"
  run nvme changed-ns-list-log "/dev/$CTRL" || fail "nvme changed-ns-list-log"
  run nvme get-log "/dev/$CTRL" --log-id=4 --log-len=4096 > /tmp/cn.txt || fail "get-log 4 (changed namespaces)"
  head -n 3 /tmp/cn.txt | sed 's/^/    /'
  run nvme fw-log "/dev/$CTRL" || fail "nvme fw-log"
  lpa=$(nvme id-ctrl "/dev/$CTRL" | sed -n 's/^lpa[[:space:]]*:[[:space:]]*//p')
  [ $((lpa)) = "$LPA_WANT" ] || fail "lpa $lpa, want $(hex $LPA_WANT)"
  run nvme get-log "/dev/$CTRL" --log-id=5 --log-len=4096 -b > /tmp/ef.bin || fail "get-log 5 (commands supported and effects)"
  [ "$(wc -c < /tmp/ef.bin)" = 4096 ] || fail "get-log 5 returned $(wc -c < /tmp/ef.bin) bytes, want 4096"
  # Admin command effects (bytes 0-1023): at least Identify (06h) is supported (CSUPP).
  [ "$(od -A n -t u1 -j $((6 * 4)) -N 1 /tmp/ef.bin | tr -d ' ')" -ge 1 ] || fail "effects log: Identify not supported"
  # Extended data (LPA bit 2): a read at an offset returns that part of the page.
  run nvme get-log "/dev/$CTRL" --log-id=5 --log-len=1024 --lpo=1024 -b > /tmp/ef2.bin || fail "get-log 5 at offset 1024"
  [ "$(sum < /tmp/ef2.bin)" = "$(slice /tmp/ef.bin 1024 1024 | sum)" ] || fail "get-log 5 at offset 1024 differs from bytes 1024-2047 of the whole page"
  say "effects log read whole and at an offset"
}

# shellcheck disable=SC2154   # v_N are set by eval below
cell_features() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  for f in 0x01 0x02 0x04 0x05 0x06 0x07 0x0b 0x0f; do
    nvme get-feature "/dev/$CTRL" -f $f > /tmp/gf.txt 2>&1 || { cat /tmp/gf.txt; fail "get-feature $f"; }
    sed 's/^/    /' /tmp/gf.txt
    eval "v_$((f))=\$(sed -n 's/.*Current value:\(0x\)\{0,1\}\([0-9a-fA-F]*\).*/0x\2/p' /tmp/gf.txt)"
  done
  nq=$(($(cat "/sys/class/nvme/$CTRL/queue_count") - 1))
  [ $((v_7 & 0xffff)) -ge $((nq - 1)) ] && [ $((v_7 >> 16)) -ge $((nq - 1)) ] \
    || fail "Number of Queues $v_7 is below the $nq queues in use"
  kato=$(cat "/sys/class/nvme/$CTRL/kato")
  [ $((v_15)) = $((kato * 1000)) ] || fail "Keep Alive Timer $v_15 ms, connected with ${kato} s"
  # A RAM namespace has no write cache (README, Volatile Write Cache): VWC 0,
  # and the feature reads 0.
  vwc=$(nvme id-ctrl "/dev/$CTRL" | sed -n 's/^vwc[[:space:]]*:[[:space:]]*//p')
  [ $((vwc & 1)) = 0 ] || fail "vwc $vwc on a RAM-only subsystem, want 0"
  [ $((v_6 & 1)) = 0 ] || fail "Volatile Write Cache feature $v_6 without a cache"
  # Host Identifier, 128-bit (EXHID): the hostid this host connected with.
  nvme get-feature "/dev/$CTRL" -f 0x81 -c 1 -b > /tmp/hid.bin 2>/tmp/hid.err || { cat /tmp/hid.err; fail "get-feature 0x81 -c 1"; }
  got=$(od -A n -t x1 /tmp/hid.bin | tr -d ' \n')
  want=$(tr -d '-' < /etc/nvme/hostid)
  say "host identifier: $got"
  [ "$got" = "$want" ] || fail "host identifier $got, connected as $want"
}

# Host Identifier without EXHID: fabrics use 128-bit identifiers only, so the
# command must fail cleanly: the spec names Invalid Field in Command; Linux's
# nvmet (6.1) answers Data SGL Length Invalid, because nvme-cli offers an
# 8-byte buffer and nvmet checks the length first. Either will do, and the
# controller must stay usable.
cell_feature_hostid_exhid0() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  if nvme get-feature "/dev/$CTRL" -f 0x81 > /tmp/gf.txt 2>&1; then
    cat /tmp/gf.txt; fail "get-feature 0x81 without EXHID succeeded"
  fi
  sed 's/^/    /' /tmp/gf.txt
  grep -qE 'Invalid Field in Command|Data SGL Length Invalid' /tmp/gf.txt \
    || fail "want status Invalid Field in Command (0x2) or Data SGL Length Invalid (0xf)"
  nvme get-feature "/dev/$CTRL" -f 0x81 -c 1 -b > /dev/null || fail "get-feature 0x81 -c 1 after the failed one"
  [ "$(cat "/sys/class/nvme/$CTRL/state")" = live ] || fail "controller not live"
}

cell_data() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  data_check "$DEV"
  run nvme flush "$DEV" || fail "nvme flush"
}

cell_data_digest() {
  connect "$MAIN_PORT" "$NQN_MAIN" --hdr-digest --data-digest
  data_check "$DEV"
  run nvme flush "$DEV" || fail "nvme flush"
}

# The optional NVM commands the target advertises (ONCS_WANT): Compare,
# Dataset Management (deallocate; DLFEAT_WANT: reads zeroes after), Write
# Zeroes; and Flush. All of them run: a target that stops advertising one
# fails here.
cell_oncs() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  d=$DEV lbs=$(blockdev --getss "$DEV")
  oncs=$(($(nvme id-ctrl "/dev/$CTRL" | sed -n 's/^oncs[[:space:]]*:[[:space:]]*//p')))
  dlfeat=$(($(nvme id-ns "$d" | sed -n 's/^dlfeat[[:space:]]*:[[:space:]]*//p')))
  say "oncs $(hex $oncs), dlfeat $(hex $dlfeat)"
  [ "$oncs" = "$ONCS_WANT" ] || fail "oncs $(hex $oncs), want $(hex $ONCS_WANT) (Compare, Dataset Management, Write Zeroes)"
  [ "$dlfeat" = "$DLFEAT_WANT" ] || fail "dlfeat $(hex $dlfeat), want $(hex $DLFEAT_WANT) (deallocated blocks read zeroes)"
  zeroes() { $DD if=/dev/zero bs="$1" count=1 status=none | sum; }
  fill() { $DD if=/dev/urandom of="$d" bs="$2" count=1 seek="$1" oflag=seek_bytes,direct conv=notrunc status=none; }
  run nvme flush "$d" || fail "nvme flush"
  # Compare: match, then Compare Failure.
  $DD if=/dev/urandom of=/tmp/blk bs="$((2 * lbs))" count=1 status=none
  put /tmp/blk 0 "$d" $((100 * lbs)) $((2 * lbs)) direct || fail "write"
  run nvme compare "$d" --start-block=100 --block-count=1 --data-size=$((2 * lbs)) --data=/tmp/blk \
    || fail "compare of matching data failed"
  printf 'x' | $DD of=/tmp/blk bs=1 seek=$((lbs + 7)) conv=notrunc status=none
  if nvme compare "$d" --start-block=100 --block-count=1 --data-size=$((2 * lbs)) --data=/tmp/blk > /tmp/cmp.txt 2>&1; then
    fail "compare of different data succeeded"
  fi
  cat /tmp/cmp.txt
  grep -q 'Compare Failure' /tmp/cmp.txt || fail "want status Compare Failure"
  allow_errors 'I/O Cmd\(0x5\).*sc 0x85'    # the expected miscompare, if logged
  # Deallocate: the range then reads zeroes (DLFEAT).
  off=$((32 * MiB)) len=$MiB
  fill "$off" "$len" || fail "write before deallocate"
  run blkdiscard -o "$off" -l "$len" "$d" || fail "blkdiscard (Dataset Management, deallocate)"
  [ "$(slice "$d" "$off" "$len" direct | sum)" = "$(zeroes "$len")" ] || fail "deallocated range does not read as zeroes (DLFEAT $dlfeat)"
  say "deallocate: $len bytes at $off read back as zeroes"
  # Write Zeroes.
  off=$((40 * MiB)) len=$((256 * KiB))
  fill "$off" "$len" || fail "write before write-zeroes"
  run nvme write-zeroes "$d" --start-block=$((off / lbs)) --block-count=$((len / lbs - 1)) \
    || fail "nvme write-zeroes"
  [ "$(slice "$d" "$off" "$len" direct | sum)" = "$(zeroes "$len")" ] || fail "write-zeroes range does not read as zeroes"
  say "write zeroes: $len bytes at $off read back as zeroes"
}

cell_fio_rand() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  fio_verify "$DEV" randwrite --rw=randwrite --bsrange=4k-128k --iodepth=16 --offset=128M --size=64M
}

cell_fio_seq() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  fio_verify "$DEV" seqwrite --rw=write --bs=1M --iodepth=4 --offset=256M --size=64M
}

cell_fio_rand_digest() {
  connect "$MAIN_PORT" "$NQN_MAIN" --hdr-digest --data-digest
  fio_verify "$DEV" randwrite --rw=randwrite --bsrange=4k-128k --iodepth=16 --offset=128M --size=64M
}

# The "big" target (matrix.py): MDTS $BIG_MAX_IO, MAXH2CDATA $BIG_H2C,
# in-capsule data $BIG_ICD. First, on the listener matrix.py captures
# ($BIG_PORT), a few transfers whose PDUs it checks afterwards, without and
# with digests: 1 MiB writes (one R2T, H2CData PDUs of MAXH2CDATA) and reads
# (C2HData PDUs of 128 KiB), writes in the capsule up to its whole size and
# just above it. Then, on the other listener (uncaptured, so the capture
# stays small), the data check and verifying fio with blocks up to 1 MiB on
# both namespaces (RAM and a file).
cell_large_io() {
  for g in "" "--hdr-digest --data-digest"; do
    # shellcheck disable=SC2086
    connect "$BIG_PORT" "$NQN_BIG" --nr-io-queues=1 $g
    if [ -z "$g" ]; then
      nvme id-ctrl "/dev/$CTRL" > /tmp/idc.txt || fail "nvme id-ctrl"
      grep -E '^(mdts|ioccsz|iorcsz|icdoff) ' /tmp/idc.txt | sed 's/^/    /'
      mdts=$(field /tmp/idc.txt mdts)
      [ $((4096 << mdts)) = "$BIG_MAX_IO" ] || fail "mdts $mdts is not $BIG_MAX_IO bytes"
      [ $(($(field /tmp/idc.txt ioccsz))) = $(((64 + BIG_ICD) / 16)) ] \
        || fail "ioccsz $(field /tmp/idc.txt ioccsz), want $(((64 + BIG_ICD) / 16)) (64 + $BIG_ICD bytes)"
      # What Linux made of MDTS: the largest request it sends.
      hw=$(cat "/sys/block/${DEV#/dev/}/queue/max_hw_sectors_kb")
      say "max_hw_sectors_kb $hw"
      [ "$hw" = $((BIG_MAX_IO / KiB)) ] || fail "max_hw_sectors_kb $hw, want $((BIG_MAX_IO / KiB))"
    fi
    $DD if=/dev/urandom of=/tmp/p bs=$MiB count=8 status=none || fail urandom
    run $DD if=/tmp/p of="$DEV" bs=$MiB count=4 oflag=direct conv=notrunc status=none \
      || fail "O_DIRECT writes of 1 MiB"
    [ "$($DD if="$DEV" bs=$MiB count=4 iflag=direct status=none | sum)" = "$(slice /tmp/p 0 $((4 * MiB)) | sum)" ] \
      || fail "1 MiB reads differ from the 1 MiB writes"
    # In the capsule: 96 KiB and the whole $BIG_ICD; by R2T: 4 KiB more.
    for x in $((4 * MiB)):$((96 * KiB)) $((5 * MiB)):$BIG_ICD $((6 * MiB)):$((BIG_ICD + 4 * KiB)); do
      put /tmp/p "${x%%:*}" "$DEV" "${x%%:*}" "${x##*:}" direct || fail "write ${x##*:} at ${x%%:*}"
      [ "$(slice "$DEV" "${x%%:*}" "${x##*:}" direct | sum)" = "$(slice /tmp/p "${x%%:*}" "${x##*:}" | sum)" ] \
        || fail "read ${x##*:} at ${x%%:*}"
    done
    nvme disconnect -n "$NQN_BIG" > /dev/null || fail disconnect
    say "captured session ${g:-without digests} done"
  done
  connect "$BIG_PORT2" "$NQN_BIG"
  d1=$DEV
  d2=$(wait_ns "$CTRL" 2) || fail "namespace 2 has no block device"
  [ "$(blockdev --getsize64 "$d2")" = "$BIG_FILE_BYTES" ] || fail "$d2: $(blockdev --getsize64 "$d2") bytes, want $BIG_FILE_BYTES"
  data_check "$d1"
  data_check "$d2"
  fio_verify "$d1" seq1m --rw=write --bs=1M --iodepth=4 --offset=64M --size=32M
  fio_verify "$d2" rand1m --rw=randwrite --bsrange=4k-1M --iodepth=8 --offset=64M --size=32M
  nvme disconnect -n "$NQN_BIG" > /dev/null || fail disconnect
  connect "$BIG_PORT2" "$NQN_BIG" --hdr-digest --data-digest
  fio_verify "$DEV" seq1m_digest --rw=write --bs=1M --iodepth=4 --offset=96M --size=16M
}

cell_ext4() {
  connect "$MAIN_PORT" "$NQN_MAIN"
  ext4_check "$DEV"
}

cell_ext4_digest() {
  connect "$MAIN_PORT" "$NQN_MAIN" --hdr-digest --data-digest
  ext4_check "$DEV"
}

# 512-byte blocks, on RAM and on a file.
cell_ns_512() {
  for nqn in "$NQN_512" "$NQN_FILE512"; do
    connect "$MAIN_PORT" "$nqn"
    [ "$(blockdev --getss "$DEV")" = 512 ] || fail "$DEV has $(blockdev --getss "$DEV")-byte blocks, want 512"
    nvme id-ns "$DEV" | grep 'in use' | sed 's/^/    /'
    nvme id-ns "$DEV" | grep -q 'lbads:9 .*in use' || fail "id-ns: LBA format in use is not 512 bytes"
    data_check "$DEV"
    fio_verify "$DEV" rand512 --rw=randwrite --bsrange=512-64k --iodepth=16 --offset=40M --size=16M
    nvme disconnect -n "$nqn" > /dev/null || fail "disconnect"
  done
}

# null:1G: writes are accepted and dropped, reads return zeroes.
cell_ns_null() {
  connect "$MAIN_PORT" "$NQN_NULL"
  size=$(blockdev --getsize64 "$DEV")
  [ "$size" = $((1024 * MiB)) ] || fail "size $size, want 1 GiB"
  $DD if=/dev/urandom of=/tmp/p bs=$MiB count=4 status=none
  put /tmp/p 0 "$DEV" $((512 * MiB)) $((4 * MiB)) direct || fail "O_DIRECT write of 4 MiB"
  [ "$(slice "$DEV" $((512 * MiB)) $((4 * MiB)) direct | sum)" = "$($DD if=/dev/zero bs=$MiB count=4 status=none | sum)" ] \
    || fail "reads of the null namespace are not zeroes"
  put /tmp/p 0 "$DEV" $((size - 4096)) 4096 direct || fail "write of the last block"
  echo "  \$ fio randrw (no verify: null drops writes)"
  fio --name=null --filename="$DEV" --ioengine=libaio --direct=1 --rw=randrw --bsrange=4k-128k \
    --iodepth=16 --size=1G --io_size=32M > /tmp/fio.txt 2>&1 || { cat /tmp/fio.txt; fail "fio on null"; }
  grep -E '^ *(write|read):' /tmp/fio.txt | sed 's/^/    /'
  run nvme flush "$DEV" || fail "flush"
  say "writes accepted, reads return zeroes"
}

# A file on the host's disk (256 MiB, sparse): data, fio, and the data is
# still there after a disconnect and a new connect.
cell_ns_file() {
  connect "$MAIN_PORT" "$NQN_FILE"
  [ "$(blockdev --getsize64 "$DEV")" = "$FILE_NS_BYTES" ] || fail "size $(blockdev --getsize64 "$DEV"), want $FILE_NS_BYTES"
  # A file has a write cache (README, Volatile Write Cache): VWC 1, on by
  # default, so Linux sends the Flushes the data below depends on.
  vwc=$(nvme id-ctrl "/dev/$CTRL" | sed -n 's/^vwc[[:space:]]*:[[:space:]]*//p')
  [ $((vwc & 1)) = 1 ] || fail "vwc $vwc on a file namespace, want 1"
  v=$(nvme get-feature "/dev/$CTRL" -f 0x06 | sed -n 's/.*Current value:\(.*\)/\1/p')
  [ $((v & 1)) = 1 ] || fail "Volatile Write Cache feature $v, want on"
  [ "$(cat "/sys/block/${DEV#/dev/}/queue/write_cache")" = "write back" ] \
    || fail "Linux sees $(cat "/sys/block/${DEV#/dev/}/queue/write_cache"), want write back"
  data_check "$DEV"
  fio_verify "$DEV" filerand --rw=randwrite --bsrange=4k-128k --iodepth=16 --offset=64M --size=32M
  $DD if=/dev/urandom of=/tmp/keep bs=$MiB count=2 status=none
  put /tmp/keep 0 "$DEV" $((100 * MiB)) $((2 * MiB)) direct || fail "write"
  run nvme flush "$DEV" || fail "flush"
  nvme disconnect -n "$NQN_FILE" > /dev/null || fail "disconnect"
  connect "$MAIN_PORT" "$NQN_FILE"
  [ "$(slice "$DEV" $((100 * MiB)) $((2 * MiB)) direct | sum)" = "$(sum < /tmp/keep)" ] \
    || fail "data written before the disconnect did not read back after the new connect"
  say "data survives a disconnect and a new connect"
}

# One subsystem, three namespaces: ram:64M, null:64M and a 128 MiB file.
cell_ns_multi() {
  connect "$MAIN_PORT" "$NQN_MULTI"
  nvme list-ns "/dev/$CTRL" > /tmp/ln.txt || fail "nvme list-ns"
  sed 's/^/    /' /tmp/ln.txt
  [ "$(grep -c ':0x' /tmp/ln.txt)" = 3 ] || fail "list-ns: want 3 namespaces"
  d1=$(wait_ns "$CTRL" 1) && d2=$(wait_ns "$CTRL" 2) && d3=$(wait_ns "$CTRL" 3) || fail "not all 3 namespaces have block devices"
  for x in "$d1:$((64 * MiB))" "$d2:$((64 * MiB))" "$d3:$MULTI_FILE_BYTES"; do
    s=$(blockdev --getsize64 "${x%%:*}")
    say "${x%%:*}: $s bytes"
    [ "$s" = "${x##*:}" ] || fail "${x%%:*} has $s bytes, want ${x##*:}"
  done
  g1=$(nvme id-ns "$d1" | sed -n 's/^nguid[[:space:]]*:[[:space:]]*//p')
  g2=$(nvme id-ns "$d2" | sed -n 's/^nguid[[:space:]]*:[[:space:]]*//p')
  g3=$(nvme id-ns "$d3" | sed -n 's/^nguid[[:space:]]*:[[:space:]]*//p')
  say "nguids: $g1 $g2 $g3"
  [ "$g1" != "$g2" ] && [ "$g2" != "$g3" ] && [ "$g1" != "$g3" ] || fail "namespaces share an nguid"
  # The same offset in each: no namespace sees another's data.
  $DD if=/dev/urandom of=/tmp/p1 bs=$MiB count=1 status=none
  $DD if=/dev/urandom of=/tmp/p3 bs=$MiB count=1 status=none
  put /tmp/p1 0 "$d1" $((4 * MiB)) $MiB direct && put /tmp/p1 0 "$d2" $((4 * MiB)) $MiB direct &&
    put /tmp/p3 0 "$d3" $((4 * MiB)) $MiB direct || fail "writes"
  [ "$(slice "$d1" $((4 * MiB)) $MiB direct | sum)" = "$(sum < /tmp/p1)" ] || fail "$d1 differs"
  [ "$(slice "$d2" $((4 * MiB)) $MiB direct | sum)" = "$($DD if=/dev/zero bs=$MiB count=1 status=none | sum)" ] || fail "$d2 (null) is not zeroes"
  [ "$(slice "$d3" $((4 * MiB)) $MiB direct | sum)" = "$(sum < /tmp/p3)" ] || fail "$d3 differs"
  say "no cross-talk between the namespaces"
  # Both data namespaces at once.
  echo "  \$ fio on $d1 and $d3 at once"
  fio --ioengine=libaio --direct=1 --verify=crc32c --do_verify=1 --verify_fatal=1 --verify_state_save=0 \
    --rw=randwrite --bsrange=4k-64k --iodepth=16 --offset=16M --size=16M \
    --name=ns1 --filename="$d1" --name=ns3 --filename="$d3" > /tmp/fio.txt 2>&1 \
    || { cat /tmp/fio.txt; fail "fio on two namespaces"; }
  grep -E '^ *(write|read):' /tmp/fio.txt | sed 's/^/    /'
  data_check "$d3"
}

# Connected with KATO 5 s and idle for three periods and more, until 3 Keep
# Alives were answered: the controller stays live, nothing resets or
# reconnects.
cell_keepalive() {
  t0=$(now)
  ka_trace_start
  connect "$MAIN_PORT" "$NQN_MAIN" --keep-alive-tmo=5
  kato=$(cat "/sys/class/nvme/$CTRL/kato") cntlid=$(cat "/sys/class/nvme/$CTRL/cntlid")
  [ "$kato" = 5 ] || fail "kato $kato, asked 5"
  v=$(nvme get-feature "/dev/$CTRL" -f 0x0f | sed -n 's/.*Current value:\(.*\)/\1/p')
  say "kato ${kato}s, Get Features Keep Alive Timer: $v"
  [ $((v)) = 5000 ] || fail "Keep Alive Timer $v, want 5000 ms"
  ka_idle "$CTRL" 3
  st=$(cat "/sys/class/nvme/$CTRL/state")
  [ "$st" = live ] || fail "state $st after idling"
  [ "$(cat "/sys/class/nvme/$CTRL/cntlid")" = "$cntlid" ] || fail "the controller was replaced"
  if dmesg_since "$t0" | grep -iE 'reset|reconnect|keep.alive|error recovery|timed out|Removing'; then
    fail "reset/reconnect while idle (above)"
  fi
  slice "$DEV" 0 $MiB direct > /dev/null || fail "read after idling"
  say "live, same controller, no reset; I/O works"
}

# restart_io HOW: file-backed target; data written and flushed, then the
# target is killed with SIGKILL under a verifying fio and started again on the
# same port; the host reconnects, fio finishes and verifies, the data written
# before reads back intact. HOW=now restarts at once, HOW=late after 62 s.
restart_io() {
  how=$1
  ctl start restart 75 || fail "the restart target is not running"
  if [ "$how" = late ]; then loss=150; else loss=60; fi
  connect "$RESTART_PORT" "$NQN_RESTART" --ctrl-loss-tmo=$loss --reconnect-delay=1
  t0=$(now)
  $DD if=/dev/urandom of=/tmp/before bs=$MiB count=8 status=none
  run $DD if=/tmp/before of="$DEV" bs=$MiB oflag=direct conv=notrunc,fsync status=none || fail "write before the kill"
  want=$(sum < /tmp/before)
  echo "  \$ fio (background): randwrite with verify, 48 MiB at 32 MiB"
  fio --name=bg --filename="$DEV" --ioengine=libaio --direct=1 --rw=randwrite --bsrange=4k-64k \
    --iodepth=8 --offset=32M --size=48M --verify=crc32c --do_verify=1 --verify_fatal=1 \
    --verify_state_save=0 > /tmp/bg.txt 2>&1 &
  bg=$!
  echo "$bg" > "$STATE/bg.pid"
  sleep 2
  kill -0 "$bg" 2>/dev/null || { cat /tmp/bg.txt; fail "fio ended before the kill"; }
  if [ "$how" = late ]; then
    ctl kill restart || fail "kill"
    i=0
    while [ "$(cat "/sys/class/nvme/$CTRL/state")" = live ]; do
      i=$((i + 1)); [ "$i" -gt 50 ] && fail "controller still live 10 s after the kill"
      sleep 0.2
    done
    say "state $(cat "/sys/class/nvme/$CTRL/state") after the kill; waiting 62 s before the start"
    sleep 62
    ctl start restart 10 || { allow_errors .; fail "the target did not start again"; }
  else
    ctl restart restart || { allow_errors .; fail "the target did not start again on its port after SIGKILL"; }
  fi
  i=0
  while [ "$(cat "/sys/class/nvme/$CTRL/state")" != live ]; do
    i=$((i + 1))
    [ "$i" -gt 300 ] && { allow_errors .; fail "controller not live 60 s after the restart"; }
    sleep 0.2
  done
  dmesg_since "$t0" | grep -E 'nvme' | grep -vE 'Reconnecting in|failed to connect socket|Failed reconnect attempt' | sed 's/^/    /'
  say "reconnect attempts: $(dmesg_since "$t0" | grep -c 'Failed reconnect attempt')"
  wait "$bg"
  rc=$?
  rm -f "$STATE/bg.pid"
  grep -E '^ *(write|read):|err=|verify' /tmp/bg.txt | sed 's/^/    /'
  [ "$rc" = 0 ] || { cat /tmp/bg.txt; fail "fio across the restart exited $rc"; }
  dmesg_since "$t0" | grep -q 'Successfully reconnected' || fail "no 'Successfully reconnected' in dmesg"
  [ "$(slice "$DEV" 0 $((8 * MiB)) direct | sum)" = "$want" ] || fail "data flushed before the kill changed"
  $DD if=/dev/urandom of=/tmp/after bs=$MiB count=1 status=none
  put /tmp/after 0 "$DEV" $((16 * MiB)) $MiB direct || fail "write after the restart"
  [ "$(slice "$DEV" $((16 * MiB)) $MiB direct | sum)" = "$(sum < /tmp/after)" ] || fail "read after the restart"
  say "fio verified across the restart; the data flushed before the kill is intact"
}

cell_restart() { restart_io now; }
cell_restart_late() { restart_io late; }

# Traffic for the host's capture (decoded by tshark on the host): discovery,
# then a session without and one with digests, each with in-capsule writes,
# R2T-driven writes, reads, flush, write zeroes and deallocate.
cell_pcap() {
  nvme discover -t tcp -a "$TARGET" -s "$PCAP_PORT" > /tmp/d.txt 2>&1 || { cat /tmp/d.txt; fail "discover"; }
  # A persistent discovery controller idling with KATO 2 s: Keep Alive
  # commands on the wire (the host counts them against the connection's
  # length).
  ka_trace_start
  nvme discover -t tcp -a "$TARGET" -s "$PCAP_PORT" --persistent --keep-alive-tmo=2 > /tmp/d.txt 2>&1 \
    || { cat /tmp/d.txt; fail "discover --persistent"; }
  c=$(ctrl_for "$DISC_NQN") || fail "no persistent discovery controller"
  [ "$(cat "/sys/class/nvme/$c/kato")" = 2 ] || fail "kato $(cat "/sys/class/nvme/$c/kato"), asked 2"
  ka_idle "$c" 3
  nvme disconnect -d "$c" > /dev/null || fail "disconnect $c"
  for g in "" "--hdr-digest --data-digest"; do
    # shellcheck disable=SC2086
    connect "$PCAP_PORT" "$NQN_PCAP" --nr-io-queues=1 $g
    $DD if=/dev/urandom of=/tmp/p bs=$MiB count=2 status=none
    for x in 0:4096 8192:8192 65536:65536 $MiB:$MiB; do
      put /tmp/p "${x%%:*}" "$DEV" "${x%%:*}" "${x##*:}" direct || fail "write ${x##*:} at ${x%%:*}"
    done
    for x in 0:4096 8192:8192 65536:65536 $MiB:$MiB; do
      [ "$(slice "$DEV" "${x%%:*}" "${x##*:}" direct | sum)" = "$(slice /tmp/p "${x%%:*}" "${x##*:}" | sum)" ] \
        || fail "read ${x##*:} at ${x%%:*}"
    done
    nvme flush "$DEV" > /dev/null || fail flush
    nvme write-zeroes "$DEV" --start-block=1024 --block-count=7 > /dev/null || fail write-zeroes
    blkdiscard -o $((8 * MiB)) -l $MiB "$DEV" || fail blkdiscard
    nvme id-ctrl "/dev/$CTRL" > /dev/null && nvme smart-log "/dev/$CTRL" > /dev/null || fail "admin commands"
    nvme disconnect -n "$NQN_PCAP" > /dev/null || fail disconnect
    say "session ${g:-without digests} done"
  done
}

cell_kernel_log() {
  dmesg > /tmp/dmesg.txt
  say "$(grep -c 'new ctrl' /tmp/dmesg.txt) controllers created during this boot"
  if grep -E 'BUG|WARNING|Oops|hung task|Call Trace|general protection' /tmp/dmesg.txt; then
    fail "the kernel complained during this boot (above)"
  fi
}

# ---------------------------------------------------------------- runner ---

# Kernel log lines about failed commands that the current cell expects
# (extended regular expression; "." allows all).
allow_errors() { echo "$1" >> "$STATE/allow_io_errors"; }

# Back to the clean state: nothing mounted, no controller, 2 CPUs online.
cleanup() {
  ka_trace_stop
  if [ -s "$STATE/bg.pid" ]; then kill "$(cat "$STATE/bg.pid")" 2>/dev/null; rm -f "$STATE/bg.pid"; fi
  grep -q ' /mnt/t ' /proc/mounts && umount /mnt/t
  if [ -n "$(ls /sys/class/nvme/ 2>/dev/null)" ]; then
    nvme disconnect-all > /dev/null 2>&1
    i=0
    while [ -n "$(ls /sys/class/nvme/ 2>/dev/null)" ]; do
      i=$((i + 1))
      if [ "$i" -gt 75 ]; then
        echo "  error: controllers left after disconnect-all: $(ls /sys/class/nvme/)"
        return 1
      fi
      sleep 0.2
    done
  fi
  for c in 2 3; do
    f=/sys/devices/system/cpu/cpu$c/online
    [ -e "$f" ] && [ "$(cat "$f")" = 1 ] && echo 0 > "$f"
  done
  return 0
}

# In the child: the cell in a subshell (fail exits that), then the check of
# the kernel log it produced, then the cleanup.
__run() {
  name=$1
  t0=$(now)
  echo '^never-matches$' > "$STATE/allow_io_errors"
  ( "cell_$name" )
  rc=$?
  dmesg_since "$t0" > "$STATE/dmesg.cell"
  if grep -E 'BUG|WARNING|Oops|hung task|Call Trace|general protection' "$STATE/dmesg.cell"; then
    echo "  error: the kernel complained during $name (above)"
    rc=1
  fi
  if grep -E 'I/O error|I/O Cmd|critical medium error' "$STATE/dmesg.cell" \
      | grep -vE -f "$STATE/allow_io_errors"; then
    echo "  error: commands failed during $name (above); a command the host considers valid must not fail"
    rc=1
  fi
  if [ "$rc" -ne 0 ]; then
    echo "  --- guest dmesg during $name (last 30 lines) ---"
    tail -n 30 "$STATE/dmesg.cell"
  fi
  cleanup || rc=1
  exit "$rc"
}

run_cell() {
  name=$1 secs=$2
  echo
  echo "CELL-BEGIN $name"
  mark begin "$name"
  t0=$(now)
  sh /test.sh __run "$name" &
  pid=$!
  (
    sleep "$secs"
    dt=$(awk "BEGIN { printf \"%.1f\", $(now) - $t0 }")
    echo "  $name: still running after ${secs}s"
    ps -o pid,stat,args 2>/dev/null | grep -v " \[" | tail -n 15
    echo "  --- guest dmesg (last 30 lines) ---"
    dmesg | tail -n 30
    mark end "$name"
    echo
    echo "CELL-END $name TIMEOUT $dt"
    echo "MATRIX-ABORT"
    sync
    poweroff -f
  ) &
  watchdog=$!
  wait "$pid"
  rc=$?
  kill "$watchdog" 2>/dev/null
  wait "$watchdog" 2>/dev/null
  dt=$(awk "BEGIN { printf \"%.1f\", $(now) - $t0 }")
  mark end "$name"
  echo
  if [ "$rc" -eq 0 ]; then echo "CELL-END $name PASS $dt"; else echo "CELL-END $name FAIL $dt"; fi
}

if [ "${1:-}" = __run ]; then
  __run "$2"
  exit $?
fi

echo "GUEST: matrix: $(echo "$CELLS" | wc -w) cells; target $TARGET; $(nproc) CPUs online"
ka_trace_setup || echo "GUEST: no nvme trace events; the Keep Alive cells will fail"
cleanup > /dev/null 2>&1
for spec in $CELLS; do
  run_cell "${spec%%:*}" "${spec##*:}"
done
echo
echo "MATRIX-DONE"
touch /run/interop.verdict
