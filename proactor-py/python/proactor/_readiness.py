"""Readiness for a completion loop: ``add_reader``/``add_writer``.

proactor issues operations (recv, send) and is told when they complete; it
never waits for "readable". asyncio's readiness API (``add_reader``,
``add_writer``, and on top of it the ``sock_*`` methods, pipes and UDP) is
served by this selector: the registrations are asyncio's own
(``BaseSelectorEventLoop``'s code, borrowed by ``proactor.Loop``), and a
helper thread, started at the first registration, waits in ``epoll`` and
hands what is ready to the loop with ``call_soon_threadsafe``. It then waits
until the loop has run those callbacks before it waits again, so a
level-triggered descriptor is reported once per loop turn, as asyncio's
selector loop does (the design of Tornado's ``SelectorThread``).
"""

import errno
import os
import selectors
import threading

__all__ = ['ThreadedSelector']


class ThreadedSelector(selectors.EpollSelector):
    """An epoll selector whose waiting happens on a helper thread."""

    def __init__(self, loop):
        super().__init__()
        self._loop = loop
        self._thread = None
        self._handled = threading.Event()
        self._closing = False
        self._wake_r = self._wake_w = -1

    def register(self, fileobj, events, data=None):
        key = super().register(fileobj, events, data)
        if self._thread is None:
            self._start()
        return key

    def _start(self):
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # The wake-up pipe is registered with epoll only, not as a key.
        self._selector.register(self._wake_r, self._EVENT_READ)
        self._handled.set()
        self._thread = threading.Thread(
            target=self._wait_loop, name='proactor-readiness', daemon=True)
        self._thread.start()

    def _wait_loop(self):
        epoll = self._selector
        while not self._closing:
            try:
                events = epoll.poll(-1)
            except InterruptedError:
                continue
            except (OSError, ValueError):
                return  # closed under us
            ready = []
            for fd, event in events:
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except OSError:
                        pass
                    continue
                mask = 0
                if event & ~self._EVENT_READ:
                    mask |= selectors.EVENT_WRITE
                if event & ~self._EVENT_WRITE:
                    mask |= selectors.EVENT_READ
                ready.append((fd, mask))
            if not ready or self._closing:
                continue
            self._handled.clear()
            try:
                self._loop.call_soon_threadsafe(self._dispatch, ready)
            except RuntimeError:
                return  # the loop is closed
            self._handled.wait()

    def _dispatch(self, ready):
        """On the loop's thread: queue the readiness callbacks behind what is
        queued already, as asyncio's selector loop runs I/O callbacks after
        the callbacks queued before its poll (a task created just before a
        datagram arrives takes its first step before it is delivered)."""
        try:
            self._loop.call_soon(self._run_ready, ready)
        except BaseException:
            self._handled.set()
            raise

    def _run_ready(self, ready):
        """Runs the callbacks of what is ready, as registered now (a
        registration may have changed meanwhile)."""
        try:
            keys = self.get_map()
            if keys is None:
                return  # closed
            event_list = []
            for fd, mask in ready:
                key = keys.get(fd)
                if key is not None and mask & key.events:
                    event_list.append((key, mask & key.events))
            if event_list:
                self._loop._process_events(event_list)
        finally:
            self._handled.set()

    def close(self):
        self._closing = True
        self._handled.set()
        thread = self._thread
        if thread is not None:
            try:
                os.write(self._wake_w, b'\0')
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    raise
            thread.join(5)
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._thread = None
        super().close()
