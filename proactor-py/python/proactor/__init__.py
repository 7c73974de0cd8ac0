"""proactor: a completion-based event loop (io_uring, epoll) as an asyncio
event loop.

    import proactor
    proactor.run(main())                     # like asyncio.run(main())
    loop = proactor.new_event_loop()         # or a loop of your own

``proactor.Loop`` is an ``asyncio.AbstractEventLoop``: its ready queue,
timers, transports and servers are proactor's, with its guarantees (no byte
lost across ``pause_reading``/``resume_reading``, ``start_tls`` keeps bytes
read ahead, callbacks never nest).
"""

import asyncio as _asyncio
import sys as _sys
import warnings as _warnings

from ._loop import Loop

__all__ = ['Loop', 'new_event_loop', 'run']
__version__ = '0.1.0'


def new_event_loop(driver=None):
    """A new proactor loop (``driver``: ``"uring"``, ``"poll"`` or None)."""
    return Loop(driver)


def run(main, *, debug=None, driver=None):
    """Run the coroutine ``main`` on a new proactor loop, like
    ``asyncio.run``, and return its result."""
    def factory():
        return new_event_loop(driver)
    if _sys.version_info >= (3, 12):
        return _asyncio.run(main, debug=debug, loop_factory=factory)
    with _asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)


if _sys.version_info < (3, 16):
    __all__ += ['EventLoopPolicy', 'install']

    class EventLoopPolicy(_asyncio.DefaultEventLoopPolicy):
        """An event loop policy whose loops are proactor's (policies are
        deprecated from Python 3.14; prefer ``proactor.run``)."""

        def _loop_factory(self):
            return new_event_loop()

        def new_event_loop(self):
            return new_event_loop()

    def install():
        """Make proactor's loop asyncio's default (deprecated from Python
        3.12, as ``uvloop.install``: use ``proactor.run``)."""
        if _sys.version_info >= (3, 12):
            _warnings.warn(
                'proactor.install() is deprecated in favor of proactor.run() '
                'starting with Python 3.12.',
                DeprecationWarning, stacklevel=2)
        _asyncio.set_event_loop_policy(EventLoopPolicy())
