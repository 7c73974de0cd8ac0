"""aiohttp and uvicorn on proactor's loop: a server and a client round trip
each, and aiohttp's web.run_app (which installs signal handlers) stopped by
a real SIGINT.

    python frameworks.py        # exit 0 when every check passed
"""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import proactor

CHECKS = []


def check(name, ok, detail=''):
    CHECKS.append((name, ok))
    print(f'  {"ok  " if ok else "FAIL"} {name} {detail}', flush=True)


async def aiohttp_round_trip():
    import aiohttp
    from aiohttp import web

    async def hello(request):
        body = await request.read()
        return web.Response(text=f'hello {len(body)}')

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(msg.data.upper())
        return sock

    app = web.Application()
    app.router.add_post('/', hello)
    app.router.add_get('/ws', ws)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, '127.0.0.1', 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession() as session:
            bodies = []
            for size in (0, 10, 1 << 20):
                async with session.post(f'http://127.0.0.1:{port}/',
                                        data=b'x' * size) as resp:
                    bodies.append(await resp.text())
            check('aiohttp POST round trips', bodies == [
                'hello 0', 'hello 10', f'hello {1 << 20}'], repr(bodies))
            async with session.ws_connect(
                    f'http://127.0.0.1:{port}/ws') as sock:
                await sock.send_str('ping')
                msg = await sock.receive()
                check('aiohttp websocket', msg.data == 'PING', repr(msg.data))
    finally:
        await runner.cleanup()


async def uvicorn_round_trip():
    import uvicorn

    async def app(scope, receive, send):
        if scope['type'] == 'lifespan':
            while True:
                message = await receive()
                if message['type'] == 'lifespan.startup':
                    await send({'type': 'lifespan.startup.complete'})
                elif message['type'] == 'lifespan.shutdown':
                    await send({'type': 'lifespan.shutdown.complete'})
                    return
        body = b''
        while True:
            message = await receive()
            body += message.get('body', b'')
            if not message.get('more_body'):
                break
        reply = b'uvicorn got %d' % len(body)
        await send({'type': 'http.response.start', 'status': 200,
                    'headers': [(b'content-type', b'text/plain'),
                                (b'content-length', b'%d' % len(reply))]})
        await send({'type': 'http.response.body', 'body': reply})

    config = uvicorn.Config(app, host='127.0.0.1', port=0, log_level='error',
                            lifespan='on')
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    replies = []
    for size in (0, 100000):
        reader, writer = await asyncio.open_connection('127.0.0.1', port)
        writer.write(b'POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n'
                     b'Content-Length: %d\r\n\r\n' % size + b'y' * size)
        await writer.drain()
        reply = await reader.read()
        replies.append(reply.split(b'\r\n\r\n', 1)[-1])
        writer.close()
        await writer.wait_closed()
    check('uvicorn app served by proactor', replies == [
        b'uvicorn got 0', b'uvicorn got 100000'], repr(replies))
    server.should_exit = True
    await task


RUN_APP = textwrap.dedent('''
    import asyncio, os, signal, sys
    sys.path.insert(0, {path!r})
    import proactor
    from aiohttp import web

    async def ping(request):
        return web.Response(text='pong')

    async def stop_soon(app):
        loop = asyncio.get_running_loop()
        print('loop', type(loop).__module__, flush=True)
        loop.call_later(0.3, os.kill, os.getpid(), signal.SIGINT)

    app = web.Application()
    app.router.add_get('/', ping)
    app.on_startup.append(stop_soon)
    web.run_app(app, host='127.0.0.1', port=0, print=None,
                loop=proactor.new_event_loop())
    print('run_app returned', flush=True)
''')


def aiohttp_run_app_signals():
    path = os.path.dirname(os.path.dirname(proactor.__file__))
    proc = subprocess.run([sys.executable, '-c', RUN_APP.format(path=path)],
                          capture_output=True, text=True, timeout=60)
    ok = (proc.returncode == 0 and 'run_app returned' in proc.stdout
          and 'proactor' in proc.stdout)
    check('aiohttp web.run_app stopped by SIGINT (add_signal_handler)', ok,
          '' if ok else proc.stdout + proc.stderr)


async def main():
    await aiohttp_round_trip()
    await uvicorn_round_trip()


if __name__ == '__main__':
    print('frameworks on proactor:')
    proactor.run(main())
    aiohttp_run_app_signals()
    failed = [n for n, ok in CHECKS if not ok]
    print(f'{len(CHECKS) - len(failed)} passed, {len(failed)} failed')
    sys.exit(1 if failed else 0)
