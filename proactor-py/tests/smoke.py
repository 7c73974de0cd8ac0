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


def debug_source_traceback():
    """In debug mode a failing callback's context has the traceback of
    where it was scheduled (asyncio's Handle._source_traceback), whose last
    frame is the caller of call_soon/call_later (uvloop's
    test_calls_debug_reporting)."""
    loop = proactor.new_event_loop()
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    loop.set_debug(True)

    def schedule_here():
        loop.call_soon(lambda: 1 / 0)
        loop.call_later(0.001, lambda: 1 / 0)
    schedule_here()
    loop.run_until_complete(asyncio.sleep(0.05))
    assert len(seen) == 2, seen
    for ctx in seen:
        tb = ctx.get('source_traceback')
        assert tb and tb[-1].name == 'schedule_here', ctx
    loop.set_debug(False)
    seen.clear()
    schedule_here()
    loop.run_until_complete(asyncio.sleep(0.05))
    assert len(seen) == 2 and all(
        'source_traceback' not in ctx for ctx in seen), seen
    loop.close()


def stop_from_thread():
    """loop.stop() from another thread does not raise (asyncio's only sets
    a flag, seen at the loop's next wake-up); it stops the loop (uvloop's
    _abort_socket_test calls it from its server thread)."""
    loop = proactor.new_event_loop()
    errors = []

    def other():
        time.sleep(0.05)
        try:
            loop.stop()
        except BaseException as e:
            errors.append(e)

    def tick():  # wakes asyncio's loop, which the flag alone does not
        loop.call_later(0.01, tick)
    tick()
    watchdog = loop.call_later(10, loop.stop)
    t = threading.Thread(target=other)
    t0 = time.monotonic()
    t.start()
    loop.run_forever()
    t.join()
    watchdog.cancel()
    assert not errors, errors
    assert time.monotonic() - t0 < 10, 'the loop ran on after stop()'
    loop.close()


def transport_flags():
    """A socket transport's _paused and _closing, as asyncio's selector
    transports have them (uvloop's test_transport_get_extra_info reads
    both)."""
    async def check():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, '127.0.0.1', 0)
        tr, _ = await loop.create_connection(
            asyncio.Protocol, *server.sockets[0].getsockname())
        assert tr._paused is False and tr._closing is False
        tr.pause_reading()
        assert tr._paused is True and not tr.is_reading()
        tr.resume_reading()
        assert tr._paused is False and tr.is_reading()
        tr.abort()
        assert tr._closing is True
        server.close()
        await server.wait_closed()
    proactor.run(check())


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
    failed = 0
    for check in (debug_source_traceback, stop_from_thread, transport_flags):
        try:
            check()
        except Exception:
            import traceback
            traceback.print_exc()
            print(f'  {check.__name__}: FAILED')
            failed += 1
    print(f'smoke on Python {sys.version.split()[0]}, drivers {drivers}: '
          + ('ok' if not failed else 'FAILED'))
    print(f'{len(drivers) + 5 - failed} passed, {failed} failed')
    sys.exit(1 if failed else 0)
