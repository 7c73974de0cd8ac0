//! Sockets the Python side made (`socket.socket` objects, configured the
//! asyncio way) handed to proactor: connected streams, listeners, and
//! connects. Python passes a duplicate of its descriptor (`os.dup`), so
//! each side closes its own and the socket lives until both did.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use proactor::{Address, AnyProtocol, ConnectFd, Server, ServerOptions};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::bound::ThreadBound;
use crate::core::LoopCore;
use crate::errors::os_error;
use crate::protocol::{Adapter, ConnState};

/// Takes the descriptor Python duplicated for us.
fn own(fd: i32) -> PyResult<OwnedFd> {
    if fd < 0 {
        return Err(PyValueError::new_err("invalid file descriptor"));
    }
    // SAFETY: the Python side hands over a descriptor it made with
    // `os.dup` for us alone and never uses again (see the module docs).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Runs `protocol` on the connected socket `fd`; `made_hook(native,
/// protocol)` makes the Python transport at `connection_made`.
#[pyfunction]
pub(crate) fn adopt(
    lp: &Bound<'_, LoopCore>,
    fd: i32,
    protocol: Py<PyAny>,
    buffered: bool,
    made_hook: Py<PyAny>,
) -> PyResult<()> {
    let fd = own(fd)?;
    let local = lp.get().local()?;
    let state = ConnState::new(local.shared.clone(), Some(protocol), made_hook);
    local
        .handle
        .adopt_stream(fd, Adapter::any(state, buffered))
        .map_err(|e| os_error(&e))?;
    Ok(())
}

/// A listening socket served by proactor.
#[pyclass(frozen, module = "proactor._proactor")]
pub(crate) struct NativeServer {
    server: ThreadBound<Server>,
}

#[pymethods]
impl NativeServer {
    /// Stops accepting and closes proactor's descriptor of the listener.
    fn close(&self) -> PyResult<()> {
        self.server.get()?.close();
        Ok(())
    }

    fn is_closed(&self) -> PyResult<bool> {
        Ok(self.server.get()?.is_closed())
    }

    /// Connections accepted so far.
    fn accepted(&self) -> PyResult<u64> {
        Ok(self.server.get()?.accepted())
    }
}

/// Serves the listening socket `fd`: for each connection, `factory()` gives
/// `(protocol, buffered)` (`protocol` None refuses it), and `made_hook` as
/// for [`adopt`].
#[pyfunction]
pub(crate) fn serve(
    lp: &Bound<'_, LoopCore>,
    fd: i32,
    factory: Py<PyAny>,
    made_hook: Py<PyAny>,
    backlog: u32,
) -> PyResult<NativeServer> {
    let fd = own(fd)?;
    let local = lp.get().local()?;
    let shared = local.shared.clone();
    let make = move || -> AnyProtocol {
        Python::attach(|py| {
            let made = factory
                .bind(py)
                .call0()
                .and_then(|r| r.extract::<(Option<Py<PyAny>>, bool)>());
            let (protocol, buffered) = match made {
                Ok(r) => r,
                Err(e) => {
                    e.write_unraisable(py, None);
                    (None, false)
                }
            };
            let state = ConnState::new(shared.clone(), protocol, made_hook.clone_ref(py));
            Adapter::any(state, buffered)
        })
    };
    let options = ServerOptions {
        backlog,
        ..ServerOptions::default()
    };
    let server = local
        .handle
        .adopt_listener(fd, make, options)
        .map_err(|e| os_error(&e))?;
    Ok(NativeServer {
        server: ThreadBound::new(server),
    })
}

/// An address as Python's socket module writes it.
fn address(addr: &Bound<'_, PyAny>) -> PyResult<Address> {
    if let Ok(s) = addr.cast::<PyString>() {
        return Ok(Address::Unix(PathBuf::from(s.to_str()?)));
    }
    if let Ok(b) = addr.cast::<PyBytes>() {
        return Ok(Address::Unix(PathBuf::from(std::ffi::OsStr::from_bytes(
            b.as_bytes(),
        ))));
    }
    let t = addr.cast::<PyTuple>()?;
    let host: String = t.get_item(0)?.extract()?;
    let port: u16 = t.get_item(1)?.extract()?;
    let host = host.split('%').next().unwrap_or_default();
    let ip: IpAddr = host
        .parse()
        .map_err(|_| PyValueError::new_err(format!("not a numeric address: {host:?}")))?;
    Ok(Address::Inet(match ip {
        IpAddr::V6(v6) if t.len() >= 4 => {
            let flow: u32 = t.get_item(2)?.extract()?;
            let scope: u32 = t.get_item(3)?.extract()?;
            SocketAddr::V6(SocketAddrV6::new(v6, port, flow, scope))
        }
        ip => SocketAddr::new(ip, port),
    }))
}

/// Cancels a connect started by [`connect`].
#[pyclass(frozen, module = "proactor._proactor")]
pub(crate) struct Canceller {
    flag: ThreadBound<Rc<CancelFlag>>,
}

#[derive(Default)]
struct CancelFlag {
    cancelled: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

#[pymethods]
impl Canceller {
    fn cancel(&self) -> PyResult<()> {
        let flag = self.flag.get()?;
        flag.cancelled.set(true);
        let waker = flag.waker.borrow_mut().take();
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

/// The connect, or nothing once cancelled (dropping it cancels the op).
struct Cancellable {
    connect: ConnectFd,
    flag: Rc<CancelFlag>,
}

impl Future for Cancellable {
    type Output = Option<std::io::Result<OwnedFd>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.flag.cancelled.get() {
            return Poll::Ready(None);
        }
        *self.flag.waker.borrow_mut() = Some(cx.waker().clone());
        Pin::new(&mut self.connect).poll(cx).map(Some)
    }
}

/// Connects the socket `fd` (Python's duplicate) to `address` with the
/// driver's connect; then `done(None)` or `done(exception)`.
#[pyfunction]
pub(crate) fn connect(
    lp: &Bound<'_, LoopCore>,
    fd: i32,
    address: &Bound<'_, PyAny>,
    done: Py<PyAny>,
) -> PyResult<Canceller> {
    let addr = self::address(address)?;
    let fd = own(fd)?;
    let local = lp.get().local()?;
    let flag = Rc::new(CancelFlag::default());
    let connect = Cancellable {
        connect: local.handle.connect_fd(fd, addr),
        flag: flag.clone(),
    };
    let shared = local.shared.clone();
    let task = local.handle.spawn(async move {
        let Some(result) = connect.await else { return };
        Python::attach(|py| {
            let exc = match result {
                // Our duplicate is closed here; Python's socket is connected.
                Ok(dup) => {
                    drop(dup);
                    None
                }
                Err(e) => Some(os_error(&e).into_value(py)),
            };
            if let Err(e) = done.bind(py).call1((exc,)) {
                let e = shared.raise_if_base(py, e);
                e.write_unraisable(py, None);
            }
        })
    });
    drop(task);
    Ok(Canceller {
        flag: ThreadBound::new(flag),
    })
}
