"""The seed's race run (bpo-33694, Victor Stinner's race.py) on proactor's
Python loop: an echo server and a client on one loop exchange COUNT packets
of 16 KiB in both directions while a timer pauses and resumes the client's
reading every INTERVAL; every echoed byte is checked against the seeded
pattern, in order. Plain TCP and TLS (asyncio's SSLProtocol over proactor's
transports, ssl= on both ends).

    python race.py                      # plain + TLS, 100 ms and 1 ms
    python race.py --loop asyncio       # the same run on asyncio's loop

Prints sent/echoed/verified/lost bytes per run; exits 1 on any loss,
mismatch or error.
"""

import argparse
import asyncio
import os
import random
import ssl
import subprocess
import sys
import tempfile
import time

PACKET = 16 * 1024


def pattern(seed, size):
    return random.Random(seed).randbytes(size)


class EchoServer(asyncio.Protocol):
    """Echoes; stops reading while its own writes are backed up."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        return False


class Client(asyncio.Protocol):
    def __init__(self, loop, count, interval, seed):
        self.loop = loop
        self.expected = pattern(seed, count * PACKET)
        self.sent = 0
        self.received = 0
        self.mismatch = None
        self.done = loop.create_future()
        self.write_paused = False
        self.interval = interval
        self.cycles = 0
        self.reading = True
        self.delivered_while_paused = 0

    def connection_made(self, transport):
        self.transport = transport
        self.pump()
        self.toggle = self.loop.call_later(self.interval, self.flip)

    def flip(self):
        if self.done.done():
            return
        if self.reading:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()
            self.cycles += 1
        self.reading = not self.reading
        self.toggle = self.loop.call_later(self.interval, self.flip)

    def pump(self):
        while not self.write_paused and self.sent < len(self.expected):
            chunk = self.expected[self.sent:self.sent + PACKET]
            self.transport.write(chunk)
            self.sent += len(chunk)

    def pause_writing(self):
        self.write_paused = True

    def resume_writing(self):
        self.write_paused = False
        self.pump()

    def data_received(self, data):
        if not self.reading:
            self.delivered_while_paused += len(data)
        end = self.received + len(data)
        if self.mismatch is None and self.expected[self.received:end] != data:
            for i, b in enumerate(data):
                if self.expected[self.received + i] != b:
                    self.mismatch = self.received + i
                    break
        self.received = end
        if self.received >= len(self.expected) and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError(
                f'connection lost after {self.received} bytes'))


def tls_contexts(tmp):
    cert, key = os.path.join(tmp, 'cert.pem'), os.path.join(tmp, 'key.pem')
    subprocess.run(
        ['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
         '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost',
         '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'],
        check=True, capture_output=True)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


async def one_run(count, interval, tls, seed):
    loop = asyncio.get_running_loop()
    server_ssl = client_ssl = None
    if tls:
        server_ssl, client_ssl = tls
    server = await loop.create_server(EchoServer, '127.0.0.1', 0,
                                      ssl=server_ssl)
    port = server.sockets[0].getsockname()[1]
    t0 = time.monotonic()
    transport, client = await loop.create_connection(
        lambda: Client(loop, count, interval, seed), '127.0.0.1', port,
        ssl=client_ssl, server_hostname='localhost' if tls else None)
    error = None
    try:
        await asyncio.wait_for(client.done, 300)
    except Exception as exc:  # reported below as a failure
        error = exc
    elapsed = time.monotonic() - t0
    client.toggle.cancel()
    transport.close()
    server.close()
    await server.wait_closed()
    total = len(client.expected)
    lost = total - client.received
    # A fast run may finish inside one 100 ms interval; at 1 ms a run that
    # never paused would prove nothing.
    toggled = client.cycles > 0 or interval >= 0.1
    ok = (error is None and client.mismatch is None and lost == 0
          and client.delivered_while_paused == 0 and toggled)
    print(f'  {"tls" if tls else "plain":5} pause/resume every '
          f'{interval * 1000:g} ms: sent {client.sent} echoed '
          f'{client.received} verified '
          f'{client.received if client.mismatch is None else client.mismatch}'
          f' lost {lost} bytes, {client.cycles} pause/resume cycles, '
          f'delivered while paused {client.delivered_while_paused}, '
          f'{elapsed:.2f} s, {2 * total / elapsed / 1e6:.1f} MB/s'
          + ('' if ok else f'  FAIL {error!r} mismatch@{client.mismatch}'
             + ('' if toggled else ' (never paused)')),
          flush=True)
    return ok


async def main(args):
    with tempfile.TemporaryDirectory() as tmp:
        tls = tls_contexts(tmp) if not args.plain_only else None
        ok = True
        for interval in args.intervals:
            ok &= await one_run(args.count, interval, None, args.seed)
            if tls:
                ok &= await one_run(args.count, interval, tls, args.seed)
        return ok


if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--loop', default='proactor',
                    choices=('proactor', 'asyncio', 'uvloop'))
    ap.add_argument('--count', type=int, default=2000)
    ap.add_argument('--intervals', type=float, nargs='*',
                    default=[0.1, 0.001])
    ap.add_argument('--seed', type=int, default=33694)
    ap.add_argument('--plain-only', action='store_true')
    args = ap.parse_args()
    if args.loop == 'proactor':
        import proactor
        factory = proactor.new_event_loop
    elif args.loop == 'uvloop':
        import uvloop
        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        print(f'race ({args.loop}, {args.count} x 16 KiB each way):')
        ok = runner.run(main(args))
    print('PASS: lost 0 bytes' if ok else 'FAIL')
    sys.exit(0 if ok else 1)
