"""Benchmark: asyncio, uvloop and proactor side by side, in one run.

For each loop, a server runs in its own process on that loop, pinned to one
CPU; the load generator runs pinned to another (``os.sched_setaffinity``,
when the machine has two or more CPUs). Rows:

- echo through asyncio streams (``start_server``, ``read``/``write``/
  ``drain``) and through a ``Protocol`` (``data_received`` writes back),
  1 KiB and 100 KiB round trips: the client is ``bench_client.c``
  (compiled here with ``cc``; C threads with blocking sockets, so no GIL
  limits it), CONNECTIONS connections each doing request/response round
  trips for SECONDS; every echoed byte is compared with what was sent.
- HTTP/1.1 keep-alive under load: a minimal ``Protocol`` server (parses
  requests, answers a fixed 13-byte body) and an aiohttp ``web`` app, each
  driven by ``wrk`` (one thread, HTTP_CONNECTIONS connections); a row fails
  on any socket error or non-2xx answer wrk reports.

Rows are measured ROUNDS times, interleaved (round 1 of every row and loop,
then round 2, ...), so that a slow spell of a shared machine hits every
loop alike; each cell is the median, with min-max.

    python bench.py                       # every loop and row, 3 rounds
    python bench.py --seconds 2 --rounds 5 --loops proactor,uvloop --rows echo

Prints two tables: round trips (or requests) per second, and the server's
CPU time (user + system, from /proc) per round trip or request, which other
work on a shared machine disturbs less than the rates. Exit 1 if a loop or
tool is missing or a check failed.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

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

RESPONSE = (b'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n'
            b'Content-Length: 13\r\n\r\nHello, world!')

class Http(asyncio.Protocol):
    """HTTP/1.1 keep-alive: one fixed answer per request (headers only)."""
    def connection_made(self, transport):
        self.transport = transport
        self.pending = b''
    def data_received(self, data):
        data = self.pending + data
        n = data.count(b'\r\n\r\n')
        if n:
            self.transport.write(RESPONSE * n)
            data = data[data.rindex(b'\r\n\r\n') + 4:]
        self.pending = data

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
    elif flavour == 'aiohttp':
        from aiohttp import web
        async def hello(request):
            return web.Response(text='Hello, world!')
        app = web.Application()
        app.router.add_get('/', hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, '127.0.0.1', 0)
        await site.start()
        server = site._server
    else:
        server = await loop.create_server(
            Http if flavour == 'http' else Echo, '127.0.0.1', 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()

with asyncio.Runner(loop_factory=factory) as runner:
    runner.run(main())
'''

# (label, server flavour, load: echo message size in bytes, or 'wrk')
ROWS = [
    ('echo, streams', 'streams', 1024),
    ('echo, streams', 'streams', 100 * 1024),
    ('echo, Protocol', 'protocol', 1024),
    ('echo, Protocol', 'protocol', 100 * 1024),
    ('HTTP, Protocol', 'http', 'wrk'),
    ('HTTP, aiohttp', 'aiohttp', 'wrk'),
]


def build_client(workdir):
    """Compiles bench_client.c; returns the executable's path."""
    exe = os.path.join(workdir, 'bench_client')
    subprocess.run(['cc', '-O2', '-pthread', '-o', exe,
                    os.path.join(HERE, 'bench_client.c')], check=True)
    return exe


def echo_load(client, port, size, args, cpus):
    out = subprocess.run(
        [client, str(port), str(size), str(args.seconds),
         str(args.connections)],
        capture_output=True, text=True, preexec_fn=pin(cpus)).stdout
    if out.startswith('FAIL') or len(out.split()) != 2:
        return None, out.strip() or 'client failed'
    count, elapsed = out.split()
    return int(count) / float(elapsed), None


def wrk_load(port, args, cpus):
    out = subprocess.run(
        ['wrk', '-t1', f'-c{args.http_connections}', f'-d{args.seconds}s',
         f'http://127.0.0.1:{port}/'],
        capture_output=True, text=True, preexec_fn=pin(cpus)).stdout
    rate = re.search(r'Requests/sec:\s*([\d.]+)', out)
    bad = re.search(r'(Socket errors:.*|Non-2xx or 3xx responses:.*)', out)
    if not rate or bad:
        return None, (bad.group(1) if bad else 'wrk: no Requests/sec')
    return float(rate.group(1)), None


def pin(cpus):
    return (lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None


def cpu_seconds(pid):
    """CPU time (user + system) the process has used so far."""
    with open(f'/proc/{pid}/stat') as f:
        fields = f.read().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def measure(loop_name, flavour, load, args, cpus, client):
    server_cpu = cpus[0] if len(cpus) >= 2 else -1
    load_cpus = cpus[1:] if len(cpus) >= 2 else None
    proc = subprocess.Popen(
        [sys.executable, '-c', SERVER, loop_name, flavour, str(server_cpu)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        cpu0 = cpu_seconds(proc.pid)
        if load == 'wrk':
            rate, error = wrk_load(port, args, load_cpus)
        else:
            rate, error = echo_load(client, port, load, args, load_cpus)
        cpu = cpu_seconds(proc.pid) - cpu0
        return rate, cpu, error
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def cell(values, fmt):
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return (f'{format(med, fmt)} ({format(min(values), fmt)}–'
            f'{format(max(values), fmt)})')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--loops', default='asyncio,uvloop,proactor')
    ap.add_argument('--rows', default='echo,http',
                    help='echo, http, or both (comma-separated)')
    ap.add_argument('--seconds', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--connections', type=int, default=4,
                    help='echo client connections')
    ap.add_argument('--http-connections', type=int, default=32)
    args = ap.parse_args()
    loops = args.loops.split(',')
    kinds = args.rows.split(',')
    rows = [r for r in ROWS
            if ('http' if r[2] == 'wrk' else 'echo') in kinds]
    if any(r[2] == 'wrk' for r in rows) and not shutil.which('wrk'):
        print('wrk not found (apt-get install wrk)')
        return 1
    cpus = sorted(os.sched_getaffinity(0))
    print(f'{args.rounds} rounds of {args.seconds} s per cell, interleaved; '
          f'echo: {args.connections} connections; HTTP: wrk -t1 '
          f'-c{args.http_connections}; Python {sys.version.split()[0]}; '
          f'server on CPU {cpus[0] if len(cpus) >= 2 else "any"}, load on '
          f'{cpus[1:] if len(cpus) >= 2 else "any"}', flush=True)
    status = 0
    rates = {}
    costs = {}
    failures = {}
    with tempfile.TemporaryDirectory() as tmp:
        client = build_client(tmp) if any(r[2] != 'wrk' for r in rows) else None
        for rnd in range(args.rounds):
            for label, flavour, load in rows:
                for loop_name in loops:
                    key = (label, load, loop_name)
                    rate, cpu, error = measure(loop_name, flavour, load,
                                               args, cpus, client)
                    if error:
                        failures.setdefault(key, error)
                    else:
                        rates.setdefault(key, []).append(rate)
                        # server CPU µs per round trip (or request)
                        costs.setdefault(key, []).append(
                            cpu * 1e6 / (rate * args.seconds))
            print(f'round {rnd + 1}/{args.rounds} done', file=sys.stderr,
                  flush=True)
    for title, table, fmt in (
            ('round trips/s (echo) or requests/s (HTTP): median (min–max)',
             rates, ',.0f'),
            ('server CPU µs per round trip or request (user + system): '
             'median (min–max); lower is better', costs, '.1f')):
        print(f'\n{title}\n')
        print('| server | load | ' + ' | '.join(loops) + ' |')
        print('|---' * (len(loops) + 2) + '|')
        for label, flavour, load in rows:
            cells = []
            for loop_name in loops:
                key = (label, load, loop_name)
                if key in failures:
                    status = 1
                    cells.append(f'FAIL {failures[key]}')
                else:
                    cells.append(cell(table[key], fmt))
            what = (f'wrk, {args.http_connections} conns' if load == 'wrk'
                    else f'{load // 1024} KiB')
            print(f'| {label} | {what} | ' + ' | '.join(cells) + ' |',
                  flush=True)
    return status


if __name__ == '__main__':
    sys.exit(main())
