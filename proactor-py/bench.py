"""Echo benchmark: asyncio, uvloop and proactor side by side, in one run.

For each loop, an echo server runs in its own process on that loop, in two
flavours: asyncio streams (``start_server``, ``read``/``write``/``drain``)
and a ``Protocol`` (``data_received`` writes back). A client process with
plain blocking sockets (the same for every loop, so only the server's loop
differs) keeps CONNECTIONS connections each doing request/response round
trips of SIZE bytes (1 KiB and 100 KiB) for SECONDS, and every echoed byte
is compared with what was sent. Server and client are pinned to different
CPUs when the machine has two or more (``os.sched_setaffinity``).

    python bench.py                       # every loop, 1 KiB and 100 KiB
    python bench.py --seconds 5 --loops proactor,uvloop

Prints one table (round trips per second, MB/s each way); exit 1 if a loop
is missing or an echo came back wrong.
"""

import argparse
import os
import socket
import subprocess
import sys
import threading
import time

SERVER = r'''
import asyncio, os, sys
loop_name, flavour, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
if loop_name == 'proactor':
    import proactor; factory = proactor.new_event_loop
elif loop_name == 'uvloop':
    import uvloop; factory = uvloop.new_event_loop
else:
    factory = asyncio.new_event_loop

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

async def handle(reader, writer):
    while True:
        data = await reader.read(256 * 1024)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    writer.close()

async def main():
    loop = asyncio.get_running_loop()
    if flavour == 'streams':
        server = await asyncio.start_server(handle, '127.0.0.1', 0)
    else:
        server = await loop.create_server(Echo, '127.0.0.1', 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()

with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(main())
'''


def client(port, size, seconds, connections):
    """Round trips per second over ``connections`` blocking sockets; checks
    every echoed byte."""
    payload = os.urandom(size)
    counts = [0] * connections
    errors = []
    deadline = time.monotonic() + seconds

    def one(i):
        try:
            with socket.create_connection(('127.0.0.1', port)) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                buf = bytearray(size)
                view = memoryview(buf)
                while time.monotonic() < deadline:
                    s.sendall(payload)
                    got = 0
                    while got < size:
                        n = s.recv_into(view[got:])
                        if n == 0:
                            raise ConnectionError('server closed')
                        got += n
                    if buf != payload:
                        raise AssertionError('echo mismatch')
                    counts[i] += 1
        except Exception as exc:  # reported in the table
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,))
               for i in range(connections)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    return sum(counts) / elapsed, errors


def run_row(loop_name, flavour, size, args, cpus):
    server_cpu = cpus[0] if len(cpus) >= 2 else -1
    proc = subprocess.Popen(
        [sys.executable, '-c', SERVER, loop_name, flavour, str(server_cpu)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        if len(cpus) >= 2:
            os.sched_setaffinity(0, set(cpus[1:]))
        rate, errors = client(port, size, args.seconds, args.connections)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rate, errors


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--loops', default='asyncio,uvloop,proactor')
    ap.add_argument('--seconds', type=float, default=3.0)
    ap.add_argument('--connections', type=int, default=4)
    args = ap.parse_args()
    loops = args.loops.split(',')
    cpus = sorted(os.sched_getaffinity(0))
    print(f'echo, {args.connections} connections, {args.seconds:g} s per '
          f'row, Python {sys.version.split()[0]}, CPUs {cpus} '
          f'(server on {cpus[0] if len(cpus) >= 2 else "any"})')
    print('| server | size | ' + ' | '.join(loops) + ' |')
    print('|---' * (len(loops) + 2) + '|')
    status = 0
    for flavour in ('streams', 'protocol'):
        for size in (1024, 100 * 1024):
            cells = []
            for loop_name in loops:
                rate, errors = run_row(loop_name, flavour, size, args, cpus)
                if errors:
                    status = 1
                    cells.append(f'FAIL {errors[0]!r}')
                else:
                    cells.append(f'{rate:,.0f}/s ({rate * size / 1e6:.0f} MB/s)')
            print(f'| {flavour} | {size // 1024} KiB | ' + ' | '.join(cells)
                  + ' |', flush=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
