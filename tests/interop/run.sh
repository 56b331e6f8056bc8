#!/usr/bin/env bash
# Interop test: the Linux kernel's NVMe/TCP host (Debian's stock kernel under
# QEMU/TCG) with nvme-cli, fio and ext4 against our target on 127.0.0.1.
#
#   tests/interop/run.sh [path/to/nvmf-tpc]   # default: target/release/nvmf-tpc
#   tests/interop/run.sh --selftest           # the harness alone, no target:
#                                             # network, modules, tools, RAM disk
#
# Environment: INTEROP_CACHE (setup.sh's cache), INTEROP_TIMEOUT (hard limit
# for the VM, seconds, default 300), INTEROP_PORT (force a port),
# INTEROP_QUIET=1 (do not stream the guest console), INTEROP_DIGESTS=1
# (connect with header and data digests).
# Exits 0 only if the guest printed INTEROP-PASS and the target survived.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE="${INTEROP_CACHE:-/var/cache/nvmf-tpc-interop}"
VM_TIMEOUT="${INTEROP_TIMEOUT:-300}"
NQN="nqn.2026-11.io.nvmf-tpc:interop"
NS_BYTES=$((512 * 1024 * 1024))              # --namespace ram:512M

MODE=nvme SERVER_NAME=target
if [ "${1:-}" = "--selftest" ]; then MODE=selftest SERVER_NAME="HTTP server"; shift; fi
BIN="${1:-$REPO/target/release/nvmf-tpc}"

log() { echo "interop: $*"; }
die() { echo "interop: ERROR: $*" >&2; exit 1; }

if [ "$MODE" = nvme ]; then
  [ -x "$BIN" ] || die "no target binary at $BIN (cargo build --release first, or pass its path)"
  BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
fi

t_start=$SECONDS
"$HERE/setup.sh"
# shellcheck source=/dev/null
. "$CACHE/current.env"                 # KVER, KERNEL, INITRD_BASE

WORK="$(mktemp -d /tmp/nvmf-tpc-interop.XXXXXX)"
SERIAL="$WORK/serial.log"
SERVER_LOG="$WORK/target.log"
SERVER_PID=""
TAIL_PID=""
VM_PID=""
RESULT=fail

cleanup() {
  [ -z "$VM_PID" ] || kill "$VM_PID" 2>/dev/null || true     # timeout passes it to QEMU
  [ -z "$TAIL_PID" ] || kill "$TAIL_PID" 2>/dev/null || true
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$SERVER_PID" 2>/dev/null || true
  fi
  rm -f "$WORK/initrd.img" "$WORK/overlay.cpio.gz"
  if [ "$RESULT" != pass ]; then
    if [ "${INTEROP_QUIET:-}" = 1 ]; then   # otherwise it was streamed above
      echo "----- guest serial console (last 60 lines): $SERIAL"
      [ -f "$SERIAL" ] && tr -d '\r' < "$SERIAL" | tail -n 60
    fi
    echo "----- $SERVER_NAME log (last 60 lines): $SERVER_LOG"
    [ -f "$SERVER_LOG" ] && tail -n 60 "$SERVER_LOG"
    echo "interop: FAIL (logs kept in $WORK)"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- A free loopback port -----------------------------------------------------
# Probe with ss rather than bind: the target binds with SO_REUSEPORT, so a
# second listener on the same port would silently share its connections.
port_busy() { ss -Hltn "sport = :$1" | grep -q .; }
if [ -n "${INTEROP_PORT:-}" ]; then
  PORT="$INTEROP_PORT"
  ! port_busy "$PORT" || die "port $PORT is busy"
else
  PORT=""
  for p in 4420 $(seq 4421 4520); do
    if ! port_busy "$p"; then PORT=$p; break; fi
  done
  [ -n "$PORT" ] || die "no free port in 4420..4520"
fi

# --- The server on the host -----------------------------------------------------
TOKEN="token-$$-$RANDOM"
if [ "$MODE" = nvme ]; then
  log "starting target on 127.0.0.1:$PORT: $BIN"
  "$BIN" serve --listen "127.0.0.1:$PORT" --allow-any-host --subsystem "$NQN" \
    --namespace ram:512M --cores 2 > "$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
else
  # The self-test's stand-in: a static HTTP server the guest fetches a token from.
  mkdir -p "$WORK/www"
  echo "$TOKEN" > "$WORK/www/token"
  log "starting HTTP server on 127.0.0.1:$PORT"
  python3 -m http.server --bind 127.0.0.1 --directory "$WORK/www" "$PORT" > "$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
fi
# Listening means: a socket on the port owned by the server or a process it
# started (a wrapper may run the listener as a child).
is_ours() {
  local p="$1"
  while [ -n "$p" ] && [ "$p" -gt 1 ]; do
    [ "$p" = "$SERVER_PID" ] && return 0
    p="$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f2)"   # the parent
  done
  return 1
}
listening() {
  local p
  for p in $(ss -Hltnp "sport = :$PORT" | grep -o 'pid=[0-9]*' | cut -d= -f2); do
    is_ours "$p" && return 0
  done
  return 1
}
for i in $(seq 600); do
  kill -0 "$SERVER_PID" 2>/dev/null || die "server exited before listening"
  listening && break
  [ "$i" -lt 600 ] || die "server not listening on $PORT after 60 s"
  sleep 0.1
done
log "listening after $((SECONDS - t_start))s (including setup)"

# --- The initramfs: cached base + this run's /init, /test.sh and settings ----------
mkdir -p "$WORK/overlay/etc"
install -m 755 "$HERE/init.sh" "$WORK/overlay/init"
install -m 755 "$HERE/guest-test.sh" "$WORK/overlay/test.sh"
cat > "$WORK/overlay/etc/interop.env" <<EOF
MODE=$MODE
TARGET=10.0.2.2
PORT=$PORT
NQN=$NQN
NS_BYTES=$NS_BYTES
TOKEN=$TOKEN
DIGESTS=${INTEROP_DIGESTS:-0}
EOF
(cd "$WORK/overlay" && find . -mindepth 1 | cpio -o -H newc --quiet -R 0:0) \
  | gzip -1 > "$WORK/overlay.cpio.gz"
# The kernel unpacks concatenated (separately compressed) cpio archives in turn.
cat "$INITRD_BASE" "$WORK/overlay.cpio.gz" > "$WORK/initrd.img"

# --- The VM ---------------------------------------------------------------------------
# TCG (KVM does not boot a stock kernel on these machines). User-mode network:
# the guest's 10.0.2.2 is this machine's 127.0.0.1; the guest has no default
# route, so it can reach nothing else. romfile= skips the unused PXE ROM.
: > "$SERIAL"
if [ "${INTEROP_QUIET:-}" != 1 ]; then
  # (--pid: never outlive this script; $! is tail itself, not a pipeline's end)
  tail --pid=$$ -n +1 -F "$SERIAL" 2>/dev/null > >(sed -u 's/\r$//') &
  TAIL_PID=$!
fi
log "booting $KVER under QEMU/TCG (limit ${VM_TIMEOUT}s)"
t_vm=$SECONDS
set +e
timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
  -nodefaults -no-user-config -display none -monitor none -no-reboot \
  -machine pc -accel tcg,thread=multi -cpu max -smp 2 -m 1024 \
  -kernel "$KERNEL" -initrd "$WORK/initrd.img" \
  -append "console=ttyS0 panic=-1 quiet" \
  -serial "file:$SERIAL" \
  -netdev user,id=n0,ipv6=off -device virtio-net-pci,netdev=n0,romfile= \
  < /dev/null > "$WORK/qemu.log" 2>&1 &
VM_PID=$!                # waited for in the background so that signals reach the trap
wait "$VM_PID"
qemu_rc=$?
VM_PID=""
set -e
vm_s=$((SECONDS - t_vm))
sleep 0.3   # let tail print the last lines
[ -z "$TAIL_PID" ] || { kill "$TAIL_PID" 2>/dev/null || true; TAIL_PID=""; }

# --- Verdict ------------------------------------------------------------------------------
console="$(tr -d '\r' < "$SERIAL")"
reason=""
if [ "$qemu_rc" -eq 124 ] || [ "$qemu_rc" -eq 137 ]; then
  reason="the VM did not finish within ${VM_TIMEOUT}s"
elif [ "$qemu_rc" -ne 0 ]; then
  reason="qemu exited $qemu_rc: $(tail -n 5 "$WORK/qemu.log")"
elif grep -q '^INTEROP-FAIL' <<< "$console"; then
  reason="$(grep '^INTEROP-FAIL' <<< "$console" | head -n 1)"
elif ! grep -qx 'INTEROP-PASS' <<< "$console"; then
  reason="no INTEROP-PASS on the guest console"
fi
if [ -z "$reason" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
  reason="the server exited during the run"
fi

boot_s="$(sed -n 's/^GUEST: init at \([0-9.]*\)s.*/\1/p' <<< "$console" | head -n 1)"
log "VM ran ${vm_s}s (guest /init started at ${boot_s:-?}s of guest uptime), total $((SECONDS - t_start))s"
if [ -n "$reason" ]; then
  echo "interop: $reason"
  exit 1
fi
RESULT=pass
log "PASS ($MODE; logs in $WORK)"
