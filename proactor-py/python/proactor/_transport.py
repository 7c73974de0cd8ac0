"""The Python transport object around proactor's native transport.

It is an ``asyncio.Transport`` (so ``isinstance`` checks pass) whose hot
methods are the native ones, bound on the instance: ``tr.write(data)`` goes
straight to Rust. ``connection_made``/``connection_lost`` pass through here
to keep asyncio's bookkeeping: the waiter, the server's connection count,
the socket object behind ``get_extra_info('socket')``.
"""

import inspect
import socket

from asyncio import base_events, constants, protocols, transports, trsock

__all__ = ['SocketTransport']

# Server._attach/_detach take the transport from 3.13 on.
_ATTACH_TAKES_TRANSPORT = len(
    inspect.signature(base_events.Server._attach).parameters) == 2

_NATIVE_METHODS = (
    'write', 'writelines', 'write_eof', 'can_write_eof', 'is_closing',
    'pause_reading', 'resume_reading', 'is_reading',
    'set_write_buffer_limits', 'get_write_buffer_limits',
    'get_write_buffer_size', 'abort',
)


def _server_attach(server, transport):
    if _ATTACH_TAKES_TRANSPORT:
        server._attach(transport)
    else:
        server._attach()


def _server_detach(server, transport):
    if _ATTACH_TAKES_TRANSPORT:
        server._detach(transport)
    else:
        server._detach()


class SocketTransport(transports.Transport):
    """A TCP or Unix stream transport running on proactor's loop."""

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.FALLBACK

    def __init__(self, loop, sock, protocol, waiter=None, extra=None,
                 server=None):
        super().__init__(extra)
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._waiter = waiter
        self._server = server
        self._native = None
        self._force_exc = None
        self._closed = False
        self._extra['socket'] = trsock.TransportSocket(sock)
        # TCP_NODELAY, as asyncio's socket transports do.
        base_events._set_nodelay(sock)
        # The descriptor is the transport's: add_reader/add_writer on it
        # raise while it is open ("is used by transport"), as in asyncio.
        loop._transports[sock.fileno()] = self
        try:
            self._extra['sockname'] = sock.getsockname()
        except OSError:
            self._extra['sockname'] = None
        if 'peername' not in self._extra:
            try:
                self._extra['peername'] = sock.getpeername()
            except OSError:
                self._extra['peername'] = None
        if server is not None:
            _server_attach(server, self)

    # -- called by the native side ----------------------------------------

    def _made(self, native, protocol):
        """proactor delivered ``connection_made``: wire up and tell the
        protocol; then wake whoever waits for the connection."""
        self._native = native
        for name in _NATIVE_METHODS:
            setattr(self, name, getattr(native, name))
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._loop.call_exception_handler({
                'message': 'Exception in callback connection_made',
                'exception': exc,
                'transport': self,
                'protocol': self._protocol,
            })
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return self

    def _connection_lost(self, exc):
        if exc is None and self._force_exc is not None:
            exc = self._force_exc
        self._closed = True
        waiter = self._waiter
        self._waiter = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionError('connection lost'))
        try:
            # proactor's close() ends the connections it still has; asyncio
            # never calls back a protocol from a closed loop (its callbacks
            # could schedule nothing there).
            if not self._loop.is_closed():
                self._protocol.connection_lost(exc)
        finally:
            sock = self._sock
            self._sock = None
            if sock is not None:
                sock.close()
            server = self._server
            self._server = None
            if server is not None:
                _server_detach(server, self)

    # -- asyncio.Transport --------------------------------------------------

    def __repr__(self):
        info = [self.__class__.__name__]
        if self._sock is None:
            info.append('closed')
        elif self.is_closing():
            info.append('closing')
        info.append(f'fd={self._sock.fileno() if self._sock else -1}')
        return '<{}>'.format(' '.join(info))

    def _call(self, name, *args):
        if self._native is None:
            raise RuntimeError('transport is not connected yet')
        return getattr(self._native, name)(*args)

    def write(self, data):
        self._call('write', data)

    def writelines(self, list_of_data):
        self._call('writelines', list_of_data)

    def write_eof(self):
        self._call('write_eof')

    def can_write_eof(self):
        return True

    def is_closing(self):
        if self._native is None:
            return self._closed
        return self._native.is_closing()

    def pause_reading(self):
        self._call('pause_reading')

    def resume_reading(self):
        self._call('resume_reading')

    def is_reading(self):
        return self._native is not None and self._native.is_reading()

    # asyncio's selector transports have these two flags, and code outside
    # asyncio reads them (uvloop's test_transport_get_extra_info does).
    @property
    def _paused(self):
        return (self._native is not None and not self._native.is_closing()
                and not self._native.is_reading())

    @property
    def _closing(self):
        return self.is_closing()

    def set_write_buffer_limits(self, high=None, low=None):
        self._call('set_write_buffer_limits', high, low)

    def get_write_buffer_limits(self):
        return self._call('get_write_buffer_limits')

    def get_write_buffer_size(self):
        return 0 if self._native is None else self._native.get_write_buffer_size()

    def close(self):
        if self._native is not None:
            self._native.close()

    def abort(self):
        if self._native is not None:
            self._native.abort()

    def _force_close(self, exc):
        """asyncio's fatal-error close (``SSLProtocol`` uses it): abort, and
        hand ``exc`` to ``connection_lost``."""
        if self._force_exc is None:
            self._force_exc = exc
        self.abort()

    def set_protocol(self, protocol):
        self._protocol = protocol
        if self._native is not None:
            self._native.set_protocol(
                protocol, isinstance(protocol, protocols.BufferedProtocol))

    def get_protocol(self):
        return self._protocol


def accepted_socket(native):
    """A socket object for an accepted connection (its own descriptor)."""
    import os
    return socket.socket(fileno=os.dup(native.fileno()))
