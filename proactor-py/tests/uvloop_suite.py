"""uvloop's own test suite with its ``UVTestCase`` re-pointed at each loop.

The tests come from uvloop's source package, fetched at run time with pip
(the version installed here, never committed) into ``--work``. Only the
classes built on ``uvloop._testbase.UVTestCase`` run (uvloop's
``AIOTestCase`` twins skip what asyncio lacks), and all three columns run
the very same tests: ``asyncio`` re-points ``new_loop``/``new_policy`` at
``asyncio.SelectorEventLoop``, ``proactor`` at ``proactor.new_event_loop``,
``uvloop`` leaves them alone. ``implementation`` stays ``'uvloop'``, so
the tests that skip themselves on asyncio run everywhere: where asyncio's
loop fails them too, they check uvloop's own behaviour.

    python uvloop_suite.py                  # test_tcp test_base test_unix test_aiohttp
    python uvloop_suite.py --modules test_tcp --loops asyncio,proactor

Each module runs in a child process, each test under a time limit
(faulthandler, as in cpython_groups.py); a test that hangs counts as failed.
Prints passed/run per module and loop, and the failing tests of asyncio and
proactor. Exit status 1 when a module did not load or proactor fails a test
that is not in ``EXPECTED_FAILURES`` (each with its reason).
"""

import argparse
import faulthandler
import json
import os
import subprocess
import sys
import tarfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cpython_groups import TEST_TIMEOUT, _Result, run_columns  # noqa: E402

MODULES = ('test_tcp', 'test_base', 'test_unix', 'test_aiohttp')
LOOPS = ('asyncio', 'uvloop', 'proactor')

_SKIPS_ON_ASYNCIO = ('skips itself on asyncio\'s loop (uvloop\'s own TLS); '
                     'proactor\'s TLS is asyncio\'s SSLProtocol, which fails '
                     'it the same way on asyncio\'s loop: ')
_DUCK_BUFFERED = ('a BaseProtocol with get_buffer/buffer_updated: uvloop '
                  'duck-types buffered protocols, asyncio (and proactor) '
                  'check isinstance(BufferedProtocol) and call data_received '
                  '(asyncio fails it too)')
# Tests proactor is not expected to pass, and why ("Class.method"). Each
# also fails on asyncio's own loop, for the same reason.
EXPECTED_FAILURES = {
    'test_tcp': {
        'Test_UV_TCP.test_create_connection_open_con_sock': (
            'wants TCP_NODELAY on a socket.socket() (proto 0): uvloop sets '
            'it on every TCP socket, asyncio (and proactor) only where '
            'sock.proto is IPPROTO_TCP (asyncio fails it too)'),
        'Test_UV_TCP.test_create_server_buffered_1': _DUCK_BUFFERED,
        'Test_UV_TCP.test_create_server_buffered_2': _DUCK_BUFFERED,
        'Test_UV_TCP.test_tcp_handle_abort_in_connection_made': (
            'wants get_extra_info("socket") to be None after an abort in '
            'connection_made; asyncio (and proactor) give the closed socket '
            'object, as the test\'s own comment says'),
        'Test_UV_TCPSSL.test_bpo_39951_discard_trailing_data': (
            _SKIPS_ON_ASYNCIO + 'APPLICATION_DATA_AFTER_CLOSE_NOTIFY from '
            'unwrap(), bpo-39951'),
        'Test_UV_TCPSSL.test_first_data_after_wakeup': (
            _SKIPS_ON_ASYNCIO + 'asyncio\'s start_tls returns the TLS '
            'transport one callback after the handshake, so the echo of data '
            'that came with the last handshake flight goes out in clear'),
        'Test_UV_TCPSSL.test_flush_before_shutdown': (
            _SKIPS_ON_ASYNCIO + 'reads get_extra_info("uvloop.sslproto")'),
        'Test_UV_TCPSSL.test_shutdown_timeout_handler_not_set': (
            _SKIPS_ON_ASYNCIO + 'asyncio\'s SSLProtocol does not call '
            'eof_received() there (asyncio\'s loop hangs until the time '
            'limit)'),
        'Test_UV_TCPSSL.test_shutdown_while_pause_reading': (
            _SKIPS_ON_ASYNCIO + 'APPLICATION_DATA_AFTER_CLOSE_NOTIFY, '
            'bpo-39951'),
        'Test_UV_TCPSSL.test_start_tls_client_buf_proto_1': (
            _SKIPS_ON_ASYNCIO + 'switches to a duck-typed buffered protocol '
            '(no data_received)'),
    },
    'test_base': {
        'TestBaseUV.test_loop_create_task_eager_start': (
            'runs from Python 3.13 on, but loop.create_task(eager_start=) is '
            'Python 3.14\'s: a TypeError from asyncio\'s create_task, which '
            'proactor borrows (asyncio fails it too)'),
        'TestBaseUV.test_thread_name_prefix_in_default_executor': (
            'wants the default executor\'s threads named "uvloop..." '
            '(asyncio\'s are "asyncio_N", as proactor\'s; asyncio fails it '
            'too)'),
    },
    'test_unix': {
        'Test_UV_Unix.test_create_unix_server_path_stream_bittype': (
            'passes cleanup_socket=, new in Python 3.13: a TypeError below '
            '3.13 (asyncio fails it too)'),
        'Test_UV_Unix.test_epollhup': _DUCK_BUFFERED,
    },
}


def fetch(work):
    """uvloop's tests/ from its source package; returns the directory
    holding ``tests``."""
    import uvloop
    version = uvloop.__version__
    root = os.path.join(work, f'uvloop-{version}-src')
    if os.path.isdir(os.path.join(root, 'tests')):
        return root
    os.makedirs(root, exist_ok=True)
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q',
                    '--no-deps', '--no-binary', 'uvloop', '-d', root,
                    f'uvloop=={version}'], check=True, timeout=600)
    sdist = next(f for f in os.listdir(root) if f.endswith('.tar.gz'))
    with tarfile.open(os.path.join(root, sdist)) as tar:
        members = [m for m in tar.getmembers()
                   if m.name.split('/')[1:2] == ['tests']]
        for m in members:
            m.name = m.name.split('/', 1)[1]
        tar.extractall(root, members=members, filter='data')
    return root


def cases(module, loop_name):
    from uvloop import _testbase as tb
    if loop_name == 'proactor':
        import proactor
        tb.UVTestCase.new_loop = lambda self: proactor.new_event_loop()
        tb.UVTestCase.new_policy = lambda self: proactor.EventLoopPolicy()
    elif loop_name == 'asyncio':
        import asyncio
        tb.UVTestCase.new_loop = lambda self: asyncio.SelectorEventLoop()
        tb.UVTestCase.new_policy = (
            lambda self: asyncio.DefaultEventLoopPolicy())
    import importlib
    mod = importlib.import_module(f'tests.{module}')
    loader = unittest.TestLoader()
    for name in sorted(dir(mod)):
        obj = getattr(mod, name)
        if (isinstance(obj, type) and issubclass(obj, tb.UVTestCase)
                and issubclass(obj, unittest.TestCase)):
            for method in loader.getTestCaseNames(obj):
                yield f'{name}.{method}', obj(method)


def child(root, module, loop_name, skip):
    faulthandler.enable()
    sys.path.insert(0, root)
    suite = unittest.TestSuite(
        t for n, t in cases(module, loop_name) if n not in skip)
    runner = unittest.TextTestRunner(stream=open(os.devnull, 'w'),
                                     resultclass=_NamedResult, verbosity=0)
    runner.run(suite)


class _NamedResult(_Result):
    """``Class.method`` names: uvloop's modules repeat method names."""

    def _line(self, test, status):
        print(f'@@RESULT {type(test).__name__}.{test._testMethodName} '
              f'{status}', flush=True)

    def startTest(self, test):
        print(f'@@START {type(test).__name__}.{test._testMethodName}',
              flush=True)
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
        unittest.TextTestResult.startTest(self, test)


def run_module(root, module, loop_name):
    results = {}
    while True:
        cmd = [sys.executable, __file__, '--child', root, module, loop_name,
               '--skip', json.dumps(sorted(results))]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True,
                              timeout=3600)
        current = None
        for line in proc.stdout.splitlines():
            if line.startswith('@@START '):
                current = line.split()[1]
            elif line.startswith('@@RESULT '):
                _, name, status = line.split()
                results[name] = status
                current = None
        if current is None:
            if proc.returncode != 0 and not results:
                results['<import>'] = 'error'  # the module did not load
            return results
        results[current] = 'timeout' if proc.returncode == 1 else 'crash'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--child', nargs=3)
    ap.add_argument('--skip', default='[]')
    ap.add_argument('--work', default=os.environ.get(
        'PROACTOR_PY_WORK', '/tmp/proactor-py-ci'))
    ap.add_argument('--loops', default=','.join(LOOPS))
    ap.add_argument('--modules', default=','.join(MODULES))
    ap.add_argument('--parallel', action='store_true',
                    help='run the loops\' columns at the same time')
    args = ap.parse_args()
    if args.child:
        child(*args.child, set(json.loads(args.skip)))
        return 0
    root = fetch(args.work)
    loops = [lp for lp in args.loops.split(',') if lp]
    modules = [m for m in args.modules.split(',') if m]
    table, status = {}, 0

    def column(loop_name):
        for module in modules:
            t0 = time.monotonic()
            res = run_module(root, module, loop_name)
            table[module, loop_name] = res
            bad = sorted(n for n, s in res.items() if s not in ('pass', 'skip'))
            print(f'{module:14} {loop_name:9} '
                  f'{sum(s == "pass" for s in res.values()):3}/'
                  f'{sum(s != "skip" for s in res.values()):3} '
                  f'({time.monotonic() - t0:.0f}s)'
                  + (f'  failing: {" ".join(bad)}'
                     if bad and loop_name != 'uvloop' else ''), flush=True)
    run_columns(column, loops, args.parallel)
    print(f'\nuvloop\'s suite, Python {sys.version.split()[0]}: passed/run')
    print('| module | ' + ' | '.join(loops) + ' |')
    print('|---' * (len(loops) + 1) + '|')
    for module in modules:
        cells = [f'{sum(s == "pass" for s in table[module, lp].values())}/'
                 f'{sum(s != "skip" for s in table[module, lp].values())}'
                 for lp in loops]
        print(f'| {module} | ' + ' | '.join(cells) + ' |')
    for module in modules:
        for lp in loops:
            if '<import>' in table[module, lp] or not table[module, lp]:
                print(f'  {module} did not load on {lp}')
                status = 1
        if 'proactor' not in loops:
            continue
        expected = EXPECTED_FAILURES.get(module, {})
        ours = table[module, 'proactor']
        unexpected = sorted(n for n, s in ours.items()
                            if s not in ('pass', 'skip') and n not in expected)
        if unexpected:
            status = 1
            print(f'  {module}: unexpected proactor failures: '
                  + ' '.join(unexpected))
        fixed = sorted(n for n in expected if ours.get(n) == 'pass')
        if fixed:
            print(f'  {module}: expected failures that pass here: '
                  + ' '.join(fixed))
    if 'proactor' in loops:
        print('\nExpected failures (proactor):')
        for module in modules:
            for name, reason in sorted(
                    EXPECTED_FAILURES.get(module, {}).items()):
                print(f'  {module}.{name}: {reason}')
    return status


if __name__ == '__main__':
    sys.exit(main())
