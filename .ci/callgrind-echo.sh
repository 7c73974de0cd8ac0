#!/usr/bin/env bash
# User-space instructions per echo round trip of one bench server, counted
# by callgrind (repeatable, unlike wall-clock figures on a shared machine).
#
#   .ci/callgrind-echo.sh KIND [CONNECTIONS] [SIZE] [ROUNDS]
#
# KIND is a `proactor bench --servers` name (proactor-uring, proactor-poll,
# tokio-ct, bare-ring, ...). The server (`proactor bench-server`) runs under
# callgrind; a Python closed-loop client (one message in flight per
# connection) warms up 20 round trips per connection, then callgrind's
# counters are zeroed, ROUNDS round trips per connection are timed, and the
# counters dumped. Prints instructions per round trip and leaves the dump
# (callgrind.echo.KIND.PID.1) for `callgrind_annotate`. Kernel work is not
# counted: add `strace -c -f -p PID` for the syscalls.
set -euo pipefail
kind=${1:?KIND}; n=${2:-64}; size=${3:-64}; rounds=${4:-200}
bin=${PROACTOR_BIN:-target/release/proactor}
out=callgrind.echo.$kind
rm -f "$out".*
fifo=$(mktemp -u); mkfifo "$fifo"
valgrind --tool=callgrind --callgrind-out-file="$out.%p" --dump-instr=no \
  "$bin" bench-server --kind "$kind" < "$fifo" > "$out.stdout" 2> "$out.log" &
vpid=$!
exec 3> "$fifo"  # the server ends when its standard input closes
for _ in $(seq 1 300); do grep -q listening "$out.stdout" 2>/dev/null && break; sleep 0.2; done
port=$(sed -n 's/^listening .*://p' "$out.stdout")
python3 - "$port" "$n" "$size" "$rounds" "$vpid" <<'PY'
import selectors, socket, subprocess, sys, time
port, n, size, rounds, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
msgs = [bytes((i * 131 + j * 7 + 1) & 255 for j in range(size)) for i in range(n)]
for s in socks:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
def run(k):
    sel, left, got = selectors.DefaultSelector(), [k] * n, [bytearray() for _ in range(n)]
    for i, s in enumerate(socks):
        s.send(msgs[i])
        sel.register(s, selectors.EVENT_READ, i)
    active = n
    while active:
        for key, _ in sel.select(30):
            i = key.data
            d = key.fileobj.recv(65536)
            if not d:
                sys.exit("the server closed a connection")
            got[i] += d
            if len(got[i]) == size:
                assert got[i] == msgs[i], "the echo differs"
                got[i] = bytearray()
                left[i] -= 1
                if left[i]:
                    key.fileobj.send(msgs[i])
                else:
                    sel.unregister(key.fileobj)
                    active -= 1
    sel.close()
run(20)
subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
t = time.time()
run(rounds)
subprocess.run(["callgrind_control", "-d", "measured", pid], check=True, capture_output=True)
print(f"{n * rounds} round trips in {time.time() - t:.2f} s under callgrind")
PY
exec 3>&-
sleep 2
kill -9 "$vpid" 2>/dev/null || true  # a uring server may sit in io_uring_enter under valgrind
wait "$vpid" 2>/dev/null || true
rm -f "$fifo"
dump=$(ls "$out".*.1)
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
echo "$kind ${n}x${size} B: $((ir / (n * rounds))) instructions per round trip ($ir in $dump)"
