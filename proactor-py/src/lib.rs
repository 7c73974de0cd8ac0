//! The Python face of proactor: an asyncio event loop whose ready queue,
//! timers, transports and servers are proactor's (see `python/proactor`
//! for the asyncio API around this native core).
//!
//! Every method Python calls catches Rust panics (PyO3's trampolines, and
//! `catch_unwind` around the loop itself), and Python exceptions cross
//! proactor's loop as described in `errors.rs`.

mod bound;
mod core;
mod errors;
mod gil;
mod handles;
mod net;
mod protocol;
mod transport;

use pyo3::prelude::*;

#[pymodule]
fn _proactor(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<core::LoopCore>()?;
    m.add_class::<handles::CallbackHandle>()?;
    m.add_class::<transport::NativeTransport>()?;
    m.add_class::<net::NativeServer>()?;
    m.add_class::<net::Canceller>()?;
    m.add_function(wrap_pyfunction!(net::adopt, m)?)?;
    m.add_function(wrap_pyfunction!(net::serve, m)?)?;
    m.add_function(wrap_pyfunction!(net::connect, m)?)?;
    Ok(())
}
