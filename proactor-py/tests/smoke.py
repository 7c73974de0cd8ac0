"""A first look: asyncio.run-style entry points, timers, executor, streams,
KeyboardInterrupt, the exception handler, and every driver the machine has."""

import asyncio
import os
import socket
import sys
import threading
import time

import proactor


async def main():
    loop = asyncio.get_running_loop()
    assert isinstance(loop, proactor.Loop)
    assert isinstance(loop, asyncio.AbstractEventLoop)
    fut = loop.create_future()
    t0 = loop.time()
    loop.call_later(0.05, fut.set_result, 42)
    assert await fut == 42 and loop.time() - t0 >= 0.05
    assert await loop.run_in_executor(None, sum, [1, 2, 3]) == 6

    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, '127.0.0.1', 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection('127.0.0.1', port)
    writer.write(b'hello\n')
    assert await reader.readline() == b'HELLO\n'
    writer.close()
    await writer.wait_closed()

    # sock_connect (proactor's connect) leaves the socket non-blocking, and
    # the readiness-based sock_* methods work on it.
    s = socket.socket()
    s.setblocking(False)
    await loop.sock_connect(s, ('127.0.0.1', port))
    assert os.get_blocking(s.fileno()) is False, 'sock_connect made it blocking'
    await loop.sock_sendall(s, b'sock\n')
    got = b''
    while not got.endswith(b'\n'):
        got += await asyncio.wait_for(loop.sock_recv(s, 100), 5)
    assert got == b'SOCK\n', got
    s.close()
    server.close()
    await server.wait_closed()

    # A subprocess: pipes (readiness) and the child watcher.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, '-c', 'import sys; print(sys.stdin.read().upper())',
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(b'piped'), 30)
    assert out.strip() == b'PIPED' and proc.returncode == 0, (out, proc)

    other = loop.create_future()
    threading.Thread(target=lambda: (
        time.sleep(0.02), loop.call_soon_threadsafe(other.set_result, 'ts'))
    ).start()
    assert await other == 'ts'

    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx['exception']))
    loop.call_soon(lambda: 1 / 0)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert isinstance(seen[0], ZeroDivisionError), seen
    return loop._driver


def interrupted():
    loop = proactor.new_event_loop()
    ran = []

    def stop():
        raise KeyboardInterrupt
    loop.call_soon(stop)
    loop.call_soon(ran.append, 1)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    else:
        raise AssertionError('KeyboardInterrupt did not leave run_forever')
    assert ran == [], 'the rest of the queue waits for the next run'
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert ran == [1]
    loop.close()


if __name__ == '__main__':
    drivers = []
    for driver in ('uring', 'poll'):
        try:
            proactor.new_event_loop(driver).close()
        except OSError as e:
            print(f'  {driver}: unavailable ({e})')
            continue
        drivers.append(proactor.run(main(), driver=driver))
    print('  default:', proactor.run(main()))
    interrupted()
    print(f'smoke on Python {sys.version.split()[0]}, drivers {drivers}: ok')
    print(f'{len(drivers) + 2} passed, 0 failed')
