"""uvloop's own test suite with its ``UVTestCase`` re-pointed at proactor.

The tests come from uvloop's source package, fetched at run time with pip
(the version installed here, never committed) into ``--work``. Only the
classes built on ``uvloop._testbase.UVTestCase`` run (the ``AIOTestCase``
ones test asyncio's loop); for the ``proactor`` column their ``new_loop``
and ``new_policy`` give proactor's loop. The ``uvloop`` column runs the same
tests unchanged, for comparison.

    python uvloop_suite.py                        # test_tcp test_base test_unix test_aiohttp
    python uvloop_suite.py --modules test_tcp --loops proactor

Each module runs in a child process, each test under a time limit
(faulthandler, as in cpython_groups.py); a test that hangs counts as failed.
Prints passed/run per module and loop; the failing tests of proactor are
listed. Exit status 0 when every module was collected and ran (the counts
are the result: uvloop's suite checks uvloop's own behaviour in places,
e.g. its error messages and private attributes).
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
from cpython_groups import TEST_TIMEOUT, _Result  # noqa: E402

MODULES = ('test_tcp', 'test_base', 'test_unix', 'test_aiohttp')
LOOPS = ('uvloop', 'proactor')


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
    args = ap.parse_args()
    if args.child:
        child(*args.child, set(json.loads(args.skip)))
        return 0
    root = fetch(args.work)
    loops = [lp for lp in args.loops.split(',') if lp]
    modules = [m for m in args.modules.split(',') if m]
    table, status = {}, 0
    for module in modules:
        for loop_name in loops:
            t0 = time.monotonic()
            res = run_module(root, module, loop_name)
            table[module, loop_name] = res
            if '<import>' in res or not res:
                status = 1
            bad = sorted(n for n, s in res.items() if s not in ('pass', 'skip'))
            print(f'{module:14} {loop_name:9} '
                  f'{sum(s == "pass" for s in res.values()):3}/'
                  f'{sum(s != "skip" for s in res.values()):3} '
                  f'({time.monotonic() - t0:.0f}s)'
                  + (f'  failing: {" ".join(bad)}'
                     if bad and loop_name == 'proactor' else ''), flush=True)
    print(f'\nuvloop\'s suite, Python {sys.version.split()[0]}: passed/run')
    print('| module | ' + ' | '.join(loops) + ' |')
    print('|---' * (len(loops) + 1) + '|')
    for module in modules:
        cells = [f'{sum(s == "pass" for s in table[module, lp].values())}/'
                 f'{sum(s != "skip" for s in table[module, lp].values())}'
                 for lp in loops]
        print(f'| {module} | ' + ' | '.join(cells) + ' |')
    return status


if __name__ == '__main__':
    sys.exit(main())
