"""``proactor.Loop``: an ``asyncio.AbstractEventLoop`` on proactor's loop.

The native base (``LoopCore``) owns proactor's event loop: its ready queue
(``call_soon``), timers (``call_later``/``call_at``), ``time()``, the run
itself (with the GIL released only while the driver waits), transports and
servers. This class adds asyncio's API around it.

Where asyncio's own code is what the API means (``create_connection`` with
Happy Eyeballs, ``create_server``'s socket options, ``start_tls``,
``getaddrinfo`` in the executor, the exception handler, executors, async
generator hooks, signal handlers), that code is used as is: the functions of
``asyncio.BaseEventLoop`` (and the Unix loop) are borrowed, not copied, so
each Python version behaves as its own asyncio does. What they call below
them (``_make_socket_transport``, ``_start_serving``, ``sock_connect``...) is
proactor's.
"""

import collections
import os
import signal
import socket
import sys
import threading
import time
import warnings
import weakref

from asyncio import (base_events, coroutines, events, protocols, sslproto,
                     selector_events, unix_events, constants)

from . import _proactor
from ._readiness import ThreadedSelector
from ._transport import SocketTransport, accepted_socket

__all__ = ['Loop']

_BASE = base_events.BaseEventLoop
_SELECTOR = selector_events.BaseSelectorEventLoop
_UNIX = unix_events._UnixSelectorEventLoop

# Everything of asyncio's BaseEventLoop that Loop does not define itself is
# asyncio's own code, used unchanged (each Python version its own), except
# what only makes sense over the base loop's private ready queue and heap.
_NOT_FROM_BASE = frozenset({
    '__init__', '__del__', '_run_once', '_add_callback', '_call_soon',
    '_timer_handle_cancelled', '_process_events', '_write_to_self',
    '_run_forever_setup', '_run_forever_cleanup',
})
# From the selector loop: the readiness API (add_reader, add_writer) and
# what asyncio builds on it (sock_recv, sock_sendall, sock_accept...; UDP),
# over ThreadedSelector. Not its sockets, servers or sock_connect: those
# are proactor's.
_NOT_FROM_SELECTOR = frozenset({
    '__init__', 'close', '_make_socket_transport', '_make_ssl_transport',
    '_close_self_pipe', '_make_self_pipe', '_process_self_data',
    '_read_from_self', '_write_to_self', '_start_serving',
    '_accept_connection', '_accept_connection2', 'sock_connect',
    '_stop_serving', '_sendfile_native',
})
# From the Unix loop: Unix sockets, pipes, subprocesses (over the policy's
# child watcher) and signal handlers.
_FROM_UNIX = (
    'create_unix_connection', 'create_unix_server',
    'add_signal_handler', 'remove_signal_handler', '_check_signal',
    '_handle_signal', '_make_read_pipe_transport', '_make_write_pipe_transport',
    '_make_subprocess_transport', '_child_watcher_callback',
)


class _SelfPipe(protocols.Protocol):
    """Reads the wakeup descriptor Python's C signal handler writes to."""

    def __init__(self, loop):
        self._loop = weakref.ref(loop)

    def _made(self, native, protocol):
        self._native = native
        return self

    def _connection_lost(self, exc):
        pass

    def data_received(self, data):
        loop = self._loop()
        if loop is not None:
            for signum in data:
                if signum:
                    loop._handle_signal(signum)


class Loop(_proactor.LoopCore, events.AbstractEventLoop):
    """An asyncio event loop whose ready queue, timers, transports and
    servers are proactor's. ``driver`` is ``"uring"`` or ``"poll"`` (default:
    ``PROACTOR_DRIVER``, else io_uring falling back to epoll)."""

    def __init__(self, driver=None):
        self._closed = False
        self._stopping = False
        self._default_executor = None
        self._executor_shutdown_called = False
        self._exception_handler = None
        self._task_factory = None
        self._debug = coroutines._is_debug_mode()
        self._set_native_debug(self._debug)
        self.slow_callback_duration = 0.1
        self._current_handle = None
        self._thread_id = None
        self._clock_resolution = time.get_clock_info('monotonic').resolution
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._servers = {}
        self._signal_handlers = {}
        self._unix_server_sockets = {}
        self._ready = collections.deque()  # only for code that peeks at it
        self._selector = ThreadedSelector(self)
        self._transports = weakref.WeakValueDictionary()
        self._make_self_pipe()

    # -- running ------------------------------------------------------------

    def _check_running(self):
        if self.is_running():
            raise RuntimeError('This event loop is already running')
        if events._get_running_loop() is not None:
            raise RuntimeError(
                'Cannot run the event loop while another loop is running')

    def run_forever(self):
        """Run until stop() is called."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook)
            events._set_running_loop(self)
            self._run_forever()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def is_running(self):
        return self._thread_id is not None

    def set_debug(self, enabled):
        _BASE.set_debug(self, enabled)
        # Debug mode times callbacks (slow_callback_duration) and makes
        # call_soon/call_later/call_at from another thread raise.
        self._set_native_debug(bool(enabled))

    def is_closed(self):
        return self._closed

    def close(self):
        if self.is_running():
            raise RuntimeError('Cannot close a running event loop')
        if self._closed:
            return
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        self._closed = True
        self._ready.clear()
        self._selector.close()
        self._selector = None  # as asyncio's loop: transports' repr checks
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        try:
            self._close()
        finally:
            for s in (self._ssock, self._csock):
                if s is not None:
                    s.close()
            self._ssock = self._csock = None

    def __del__(self, _warn=warnings.warn):
        if not getattr(self, '_closed', True):
            _warn(f'unclosed event loop {self!r}', ResourceWarning,
                  source=self)
            if not self.is_running():
                self.close()

    # -- signals (asyncio's Unix code, over a self-pipe that proactor reads)

    def _make_self_pipe(self):
        self._ssock, self._csock = socket.socketpair()
        self._ssock.setblocking(False)
        self._csock.setblocking(False)
        pipe = _SelfPipe(self)
        _proactor.adopt(self, os.dup(self._ssock.fileno()), pipe, False,
                        pipe._made)

    def _add_callback_signalsafe(self, handle):
        self.call_soon(handle._run)

    def _write_to_self(self):
        csock = self._csock
        if csock is not None:
            try:
                csock.send(b'\0')
            except OSError:
                pass

    # -- transports and servers on proactor ---------------------------------

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        transport = SocketTransport(self, sock, protocol, waiter, extra,
                                    server)
        buffered = isinstance(protocol, protocols.BufferedProtocol)
        fd = os.dup(sock.fileno())
        _proactor.adopt(self, fd, protocol, buffered, transport._made)
        return transport

    def _make_ssl_transport(
            self, rawsock, protocol, sslcontext, waiter=None,
            *, server_side=False, server_hostname=None,
            extra=None, server=None,
            ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
            ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
            call_connection_made=True):
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        self._make_socket_transport(rawsock, ssl_protocol, extra=extra,
                                    server=server)
        return ssl_protocol._app_transport

    def _start_serving(self, protocol_factory, sock, sslcontext=None,
                       server=None, backlog=100,
                       ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
                       ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT):
        if sock.fileno() in self._servers:
            return

        def factory():
            try:
                protocol = protocol_factory()
                if sslcontext:
                    protocol = sslproto.SSLProtocol(
                        self, protocol, sslcontext, None, True, None,
                        ssl_handshake_timeout=ssl_handshake_timeout,
                        ssl_shutdown_timeout=ssl_shutdown_timeout)
                return (protocol,
                        isinstance(protocol, protocols.BufferedProtocol))
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self.call_exception_handler({
                    'message': ('Error on transport creation for incoming '
                                'connection'),
                    'exception': exc,
                })
                return (None, False)

        def made(native, protocol):
            conn = accepted_socket(native)
            transport = SocketTransport(self, conn, protocol, None, None,
                                        server)
            return transport._made(native, protocol)

        native = _proactor.serve(self, os.dup(sock.fileno()), factory, made,
                                 max(int(backlog), 0))
        self._servers[sock.fileno()] = native

    def _stop_serving(self, sock):
        path = None
        if sock in self._unix_server_sockets:
            path = sock.getsockname()
        native = self._servers.pop(sock.fileno(), None)
        if native is not None:
            # proactor closes its descriptor once the accept in flight has
            # answered its cancel; stop listening now, as asyncio does.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            native.close()
        sock.close()
        if path is not None:
            prev_ino = self._unix_server_sockets.pop(sock)
            try:
                if os.stat(path).st_ino == prev_ino:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                base_events.logger.error(
                    'Unable to clean up listening UNIX socket %r: %r',
                    path, err)

    async def sock_connect(self, sock, address):
        """Connect ``sock`` with proactor's connect (io_uring or epoll); a
        datagram socket the selector way (proactor adopts streams only)."""
        base_events._check_ssl_socket(sock)
        if sock.type != socket.SOCK_STREAM:
            return await _SELECTOR.sock_connect(self, sock, address)
        if sock.family == socket.AF_INET or (
                base_events._HAS_IPv6 and sock.family == socket.AF_INET6):
            resolved = await self._ensure_resolved(
                address, family=sock.family, type=sock.type, proto=sock.proto,
                loop=self)
            _, _, _, _, address = resolved[0]
        fut = self.create_future()

        def done(exc):
            if fut.done():
                return
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)

        # The duplicate shares the open file description, whose O_NONBLOCK
        # the driver sets its own way (io_uring: blocking): the caller's
        # socket gets its mode back when the connect is over.
        timeout = sock.gettimeout()
        canceller = _proactor.connect(self, os.dup(sock.fileno()), address,
                                      done)
        try:
            return await fut
        finally:
            if not fut.done() or fut.cancelled():
                canceller.cancel()
            fut = None
            if sock.fileno() != -1:
                sock.settimeout(timeout)

    def _add_callback(self, handle):
        # Readiness callbacks (_process_events) run at once: this is
        # already a callback of the loop.
        if not handle._cancelled:
            handle._run()


_OWN = set(Loop.__dict__) | set(_proactor.LoopCore.__dict__)
for _name, _value in vars(_BASE).items():
    if (_name not in _OWN and _name not in _NOT_FROM_BASE
            and callable(_value) and not isinstance(_value, type)):
        setattr(Loop, _name, _value)
for _name, _value in vars(_SELECTOR).items():
    if (_name not in _OWN and _name not in _NOT_FROM_SELECTOR
            and callable(_value) and not isinstance(_value, type)):
        setattr(Loop, _name, _value)
for _name in _FROM_UNIX:
    if hasattr(_UNIX, _name):
        setattr(Loop, _name, getattr(_UNIX, _name))
del _name, _value
