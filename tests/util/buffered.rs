//! A [`BufferedProtocol`] that records what it receives, checks R3/R4, and
//! runs a hook after every `buffer_updated` so tests can pause, close, abort,
//! switch protocol or start TLS at any byte of a received chunk.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use proactor::{AnyProtocol, BaseProtocol, BufferedProtocol, Transport};

use super::recorder::Rec;

/// Called after each `buffer_updated` with the bytes just written.
pub type BufHook = Box<dyn FnMut(&Transport, &[u8])>;

/// The recording buffered protocol; shares a [`Rec`] with the test.
pub struct BufRecorder {
    rec: Rc<RefCell<Rec>>,
    buf: Vec<u8>,
    /// Buffer sizes to hand out, cycled (`[1]`: one byte at a time).
    sizes: Vec<usize>,
    next_size: usize,
    hook: Option<BufHook>,
    transport: Option<Transport>,
}

impl BufRecorder {
    /// A buffered protocol handing out buffers of `sizes` (cycled).
    pub fn create(sizes: &[usize], hook: Option<BufHook>) -> (AnyProtocol, Rc<RefCell<Rec>>) {
        let rec = Rc::new(RefCell::new(Rec::default()));
        (Self::continuing(rec.clone(), None, sizes, hook), rec)
    }

    /// A buffered protocol that continues `rec` (installed by `set_protocol`).
    pub fn continuing(
        rec: Rc<RefCell<Rec>>,
        transport: Option<Transport>,
        sizes: &[usize],
        hook: Option<BufHook>,
    ) -> AnyProtocol {
        assert!(sizes.iter().all(|&s| s > 0));
        AnyProtocol::buffered(BufRecorder {
            rec,
            buf: Vec::new(),
            sizes: sizes.to_vec(),
            next_size: 0,
            hook,
            transport,
        })
    }
}

impl BaseProtocol for BufRecorder {
    fn connection_made(&mut self, transport: Transport) {
        let mut r = self.rec.borrow_mut();
        r.made += 1;
        r.transport = Some(transport.clone());
        self.transport = Some(transport);
    }

    fn connection_lost(&mut self, error: Option<io::Error>) {
        let mut r = self.rec.borrow_mut();
        r.lost += 1;
        if r.lost > 1 {
            r.violations.push("R4: connection_lost twice".into());
        }
        if let Some(t) = &self.transport {
            let l = t.ledger();
            if !l.balanced() || l.held != 0 {
                r.violations
                    .push(format!("R1: ledger unbalanced at connection_lost: {l:?}"));
            }
        }
        r.lost_kind = error.as_ref().map(io::Error::kind);
        r.lost_error = error.map(|e| e.to_string());
    }

    fn eof_received(&mut self) -> bool {
        let mut r = self.rec.borrow_mut();
        r.eof += 1;
        if self.transport.as_ref().is_some_and(Transport::is_closing) {
            r.violations
                .push("R4: eof_received after the application closed".into());
        }
        false
    }
}

impl BufferedProtocol for BufRecorder {
    fn get_buffer(&mut self, size_hint: usize) -> &mut [u8] {
        if size_hint == 0 {
            self.rec
                .borrow_mut()
                .violations
                .push("get_buffer with a zero size hint".into());
        }
        let size = self.sizes[self.next_size % self.sizes.len()];
        self.next_size += 1;
        self.buf.resize(size, 0);
        &mut self.buf
    }

    fn buffer_updated(&mut self, nbytes: usize) {
        let got = self.buf[..nbytes].to_vec();
        {
            let mut r = self.rec.borrow_mut();
            if r.made == 0 || r.lost > 0 || r.eof > 0 {
                r.violations
                    .push("R4: buffer_updated outside made..eof/lost".into());
            }
            if nbytes == 0 {
                r.violations.push("R1: buffer_updated(0)".into());
            }
            if let Some(t) = &self.transport {
                if !t.is_reading() {
                    r.violations.push(format!(
                        "R3/R5: buffer_updated({nbytes}) while paused or closing"
                    ));
                }
            }
            r.data.extend_from_slice(&got);
            r.data_calls += 1;
        }
        if let (Some(h), Some(t)) = (&mut self.hook, self.transport.clone()) {
            h(&t, &got);
        }
    }
}
