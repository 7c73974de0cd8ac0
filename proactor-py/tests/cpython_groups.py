"""CPython's own asyncio tests against asyncio's loop, uvloop and proactor.

The test mixins build their loops themselves (``SelectorEventLoop``,
``new_loop()``), so a policy is not enough: each group is subclassed here
with the loop's factory; the groups that call ``asyncio.new_event_loop()``
get a policy set around each test.

    python cpython_groups.py                 # every group, every loop, table
    python cpython_groups.py --loops proactor --groups test_events -v

Each group runs in a child process; every test has a time limit
(``faulthandler.dump_traceback_later(exit=True)``): a test that hangs is
counted as failed ("timeout"), and the child is started again after it.
Exit status 1 if proactor passes fewer tests than asyncio in a group,
beyond its expected failures (``EXPECTED_FAILURES``, each with its reason).
"""

import argparse
import asyncio
import faulthandler
import json
import os
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_TIMEOUT = float(os.environ.get('PROACTOR_TEST_TIMEOUT', '60'))
LOOPS = ('asyncio', 'uvloop', 'proactor')

# group name -> (module, mixin class, how the loop is chosen: 'create'
# (create_event_loop), 'new_loop', or 'policy' (asyncio.new_event_loop))
GROUPS = {
    'test_events': ('test_events', 'EventLoopTestsMixin', 'create'),
    'test_streams': ('test_streams', 'StreamTests', 'policy'),
    'test_ssl': ('test_ssl', 'TestSSL', 'policy'),
    'test_sslproto': ('test_sslproto', 'BaseStartTLS', 'new_loop'),
    'test_buffered_proto': ('test_buffered_proto', 'BaseTestBufferedProtocol',
                            'new_loop'),
    'test_server': ('test_server', 'BaseStartServer', 'new_loop'),
}

# Tests proactor is not expected to pass, and why. Keys are test method
# names (as printed by -v), optionally "group.method".
EXPECTED_FAILURES = {
    'test_events.test_timeout_rounding': (
        'counts calls of BaseEventLoop._run_once and reads loop._selector '
        '(private attributes of the selector loop; proactor runs its own turn)'),
}


def loop_factory(name):
    if name == 'asyncio':
        return asyncio.SelectorEventLoop
    if name == 'uvloop':
        import uvloop
        return uvloop.new_event_loop
    if name == 'proactor':
        import proactor
        return proactor.new_event_loop
    raise ValueError(name)


def policy_for(factory):
    class Policy(asyncio.DefaultEventLoopPolicy):
        def new_event_loop(self):
            return factory()
    return Policy()


def build_case(group, loop_name):
    import importlib
    module_name, mixin_name, how = GROUPS[group]
    mod = importlib.import_module(f'test.test_asyncio.{module_name}')
    mixin = getattr(mod, mixin_name)
    factory = loop_factory(loop_name)
    bases = (mixin,)
    if not issubclass(mixin, unittest.TestCase):
        from test.test_asyncio import utils as test_utils
        bases += ((test_utils.TestCase,) if how == 'create'
                  else (unittest.TestCase,))
    ns = {}
    from test.test_asyncio import utils as test_utils
    original_close_loop = test_utils.TestCase.close_loop

    def close_loop(loop):
        # test_utils.TestCase.close_loop reads BaseEventLoop's private
        # _default_executor; uvloop has none: the public way for it.
        if hasattr(loop, '_default_executor'):
            return original_close_loop(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
    ns['close_loop'] = staticmethod(close_loop)
    if how == 'create':
        ns['create_event_loop'] = lambda self: factory()
    elif how == 'new_loop':
        ns['new_loop'] = lambda self: factory()
    else:
        def setUp(self, _up=mixin.setUp):
            self._saved_policy = asyncio.events._event_loop_policy
            asyncio.set_event_loop_policy(policy_for(factory))
            _up(self)

        def tearDown(self, _down=mixin.tearDown):
            try:
                _down(self)
            finally:
                asyncio.set_event_loop_policy(self._saved_policy)
        ns['setUp'] = setUp
        ns['tearDown'] = tearDown
    return type(f'{mixin_name}_{loop_name}', bases, ns)


class _Result(unittest.TextTestResult):
    """Prints one machine-readable line per finished test."""

    def _line(self, test, status):
        print(f'@@RESULT {test._testMethodName} {status}', flush=True)

    def startTest(self, test):
        print(f'@@START {test._testMethodName}', flush=True)
        faulthandler.dump_traceback_later(TEST_TIMEOUT, exit=True)
        super().startTest(test)

    def stopTest(self, test):
        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._line(test, 'pass')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._line(test, 'fail')

    def addError(self, test, err):
        super().addError(test, err)
        self._line(test, 'error')

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._line(test, 'skip')

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._line(test, 'skip')

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._line(test, 'pass')

    def addSubTest(self, test, subtest, err):
        # A failing subtest fails its test (which then gets no
        # addSuccess): without this line it would not be counted at all.
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._line(test, 'fail' if issubclass(
                err[0], test.failureException) else 'error')


def child(group, loop_name, skip, verbose):
    faulthandler.enable()
    case = build_case(group, loop_name)
    names = [n for n in unittest.TestLoader().getTestCaseNames(case)
             if n not in skip]
    suite = unittest.TestSuite(case(n) for n in names)
    stream = sys.stderr if verbose else open(os.devnull, 'w')
    runner = unittest.TextTestRunner(stream=stream, resultclass=_Result,
                                     verbosity=2 if verbose else 0)
    runner.run(suite)


def run_group(group, loop_name, verbose):
    """Runs a group in child processes; returns {test: status}."""
    results = {}
    while True:
        cmd = [sys.executable, __file__, '--child', group, loop_name,
               '--skip', json.dumps(sorted(results))]
        if verbose:
            cmd.append('-v')
        proc = subprocess.run(cmd, stdout=subprocess.PIPE,
                              stderr=None if verbose else subprocess.DEVNULL,
                              text=True, timeout=3600)
        current = None
        for line in proc.stdout.splitlines():
            if line.startswith('@@START '):
                current = line.split()[1]
            elif line.startswith('@@RESULT '):
                _, name, status = line.split()
                results[name] = status
                current = None
        if current is None:
            if proc.returncode not in (0, 1) and not results:
                results['<import>'] = 'error'
            return results
        # The child died in a test (its time limit, or a crash): count it
        # and go on with the rest.
        results[current] = 'timeout' if proc.returncode == 1 else 'crash'


def run_columns(column, loops, parallel):
    """Calls ``column(loop_name)`` for each loop, one after the other or
    each in its own thread (the tests run in child processes)."""
    if not parallel:
        for loop_name in loops:
            column(loop_name)
        return
    threads = [threading.Thread(target=column, args=(lp,)) for lp in loops]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--child', nargs=2)
    ap.add_argument('--skip', default='[]')
    ap.add_argument('--loops', default=','.join(LOOPS))
    ap.add_argument('--groups', default=','.join(GROUPS))
    ap.add_argument('-v', action='store_true')
    ap.add_argument('--parallel', action='store_true',
                    help='run the loops\' columns at the same time (each '
                    'in its own child processes): the same tests, less wall '
                    'time where a column waits out time limits')
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], set(json.loads(args.skip)), args.v)
        return 0
    try:
        import test.test_asyncio  # noqa: F401
    except ImportError as e:
        print(f'CPython\'s test package is missing here ({e}): on Debian, '
              f'apt install libpython3.{sys.version_info[1]}-testsuite')
        return 1
    loops = [l for l in args.loops.split(',') if l]
    if 'uvloop' in loops:
        try:
            import uvloop  # noqa: F401
        except ImportError:
            print('uvloop is not installed: its column is skipped')
            loops.remove('uvloop')
    table = {}
    status = 0

    def column(loop_name):
        for group in args.groups.split(','):
            t0 = time.monotonic()
            res = run_group(group, loop_name, args.v)
            table[group, loop_name] = res
            bad = sorted(n for n, s in res.items() if s not in ('pass', 'skip'))
            print(f'{group:22} {loop_name:9} '
                  f'{sum(s == "pass" for s in res.values()):3}/'
                  f'{sum(s != "skip" for s in res.values()):3} '
                  f'({time.monotonic() - t0:.0f}s)'
                  + (f'  failing: {" ".join(bad)}' if bad and loop_name == 'proactor' else ''),
                  flush=True)
    run_columns(column, loops, args.parallel)
    print()
    print(f'Python {sys.version.split()[0]}: passed/run per group')
    print(f'| group | ' + ' | '.join(loops) + ' |')
    print('|---' * (len(loops) + 1) + '|')
    for group in args.groups.split(','):
        cells = []
        for loop_name in loops:
            res = table[group, loop_name]
            cells.append(f'{sum(s == "pass" for s in res.values())}/'
                         f'{sum(s != "skip" for s in res.values())}')
        print(f'| {group} | ' + ' | '.join(cells) + ' |')
        for loop_name in loops:
            if '<import>' in table[group, loop_name]:
                status = 1
                print(f'  {group} did not load on {loop_name}')
        if 'proactor' in loops and 'asyncio' in loops:
            ours = table[group, 'proactor']
            theirs = table[group, 'asyncio']
            unexpected = sorted(
                n for n, s in ours.items()
                if s not in ('pass', 'skip') and theirs.get(n) == 'pass'
                and n not in EXPECTED_FAILURES
                and f'{group}.{n}' not in EXPECTED_FAILURES)
            if unexpected:
                status = 1
                print(f'  {group}: unexpected proactor failures: '
                      + ' '.join(unexpected))
    if EXPECTED_FAILURES:
        print('\nExpected failures (proactor):')
        for name, reason in sorted(EXPECTED_FAILURES.items()):
            print(f'  {name}: {reason}')
    return status


if __name__ == '__main__':
    sys.exit(main())
