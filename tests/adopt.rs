//! Sockets made elsewhere (`Handle::adopt_stream`, `adopt_listener`,
//! `connect_fd`) and `Transport::raw_fd`, on the kernel drivers; `sim` has
//! no kernel sockets and says `Unsupported`.

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::rc::Rc;

use proactor::{
    Address, AnyProtocol, BaseProtocol, DriverKind, EventLoop, Protocol, ServerOptions, Transport,
};

fn kernel_loops() -> Vec<EventLoop> {
    let mut loops = vec![EventLoop::builder()
        .driver(DriverKind::Poll)
        .build()
        .unwrap()];
    match EventLoop::builder().driver(DriverKind::Uring).build() {
        Ok(l) => loops.push(l),
        Err(e) => eprintln!("uring skipped: {e}"),
    }
    loops
}

/// Echoes, and records the transport it was given.
#[derive(Default)]
struct Echo(Rc<RefCell<Option<Transport>>>);

impl BaseProtocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        *self.0.borrow_mut() = Some(t);
    }
}

impl Protocol for Echo {
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &*self.0.borrow() {
            t.write(data);
        }
    }
}

/// Collects bytes and stops the loop once `want` arrived.
struct Collect {
    got: Rc<RefCell<Vec<u8>>>,
    want: usize,
    handle: proactor::Handle,
}

impl BaseProtocol for Collect {
    fn connection_made(&mut self, t: Transport) {
        t.write(b"ping over an adopted socket");
    }
}

impl Protocol for Collect {
    fn data_received(&mut self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
        if self.got.borrow().len() >= self.want {
            self.handle.stop();
        }
    }
}

#[test]
fn an_adopted_listener_serves_and_a_connect_fd_socket_is_adopted() {
    for event_loop in kernel_loops() {
        let h = event_loop.handle();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Rc::new(RefCell::new(None));
        let s = seen.clone();
        let server = h
            .adopt_listener(
                OwnedFd::from(listener),
                move || AnyProtocol::from(Echo(s.clone())),
                ServerOptions::default(),
            )
            .unwrap();
        assert_eq!(server.local_addr(), Address::Inet(addr));

        // A socket we make and bind ourselves, connected by the loop.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        let local = sock.local_addr().unwrap().as_socket().unwrap();
        let connected = event_loop
            .run_until_complete(h.connect_fd(OwnedFd::from(sock), Address::Inet(addr)))
            .unwrap()
            .unwrap();
        let got = Rc::new(RefCell::new(Vec::new()));
        let msg = b"ping over an adopted socket";
        let client = h
            .adopt_stream(
                connected,
                Collect {
                    got: got.clone(),
                    want: msg.len(),
                    handle: h.clone(),
                },
            )
            .unwrap();
        event_loop.run_forever().unwrap();
        assert_eq!(&got.borrow()[..], msg);
        assert_eq!(
            client.local_addr(),
            Some(Address::Inet(local)),
            "the bind held"
        );

        // raw_fd names the socket itself: getsockname agrees.
        let fd = client.raw_fd().expect("a kernel socket has an fd");
        let borrowed = unsafe_free_peer(fd);
        assert_eq!(borrowed, addr);
        let accepted = seen.borrow().clone().unwrap();
        assert!(accepted.raw_fd().is_some());
        client.close();
        server.close();
        let stopper = h.clone();
        h.call_later(std::time::Duration::from_millis(20), move || stopper.stop());
        event_loop.run_forever().unwrap();
        assert_eq!(client.raw_fd(), None, "closed: no fd");
    }
}

/// The peer of `fd`, via a dup we own (nothing here closes the loop's fd).
fn unsafe_free_peer(fd: std::os::fd::RawFd) -> std::net::SocketAddr {
    // SAFETY: `fd` is open (the transport is live) for the duration of the call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let s = socket2::Socket::from(borrowed.try_clone_to_owned().unwrap());
    s.peer_addr().unwrap().as_socket().unwrap()
}

#[test]
fn connect_fd_reports_the_kernel_error_with_its_errno() {
    for event_loop in kernel_loops() {
        let h = event_loop.handle();
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        }; // closed: nobody listens there now
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let err = event_loop
            .run_until_complete(h.connect_fd(OwnedFd::from(sock), Address::Inet(port)))
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
        assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    }
}

#[test]
fn an_adopted_stream_talks_to_a_blocking_peer() {
    for event_loop in kernel_loops() {
        let h = event_loop.handle();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        let seen = Rc::new(RefCell::new(None));
        let t = h
            .adopt_stream(OwnedFd::from(ours), Echo(seen.clone()))
            .unwrap();
        theirs.write_all(b"hello").unwrap();
        theirs.set_nonblocking(true).unwrap();
        let mut buf = Vec::new();
        for _ in 0..200 {
            h.run_once().unwrap();
            let mut chunk = [0u8; 16];
            match theirs.read(&mut chunk) {
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if buf.len() == 5 {
                break;
            }
        }
        assert_eq!(buf, b"hello");
        assert!(t.raw_fd().is_some_and(|fd| fd >= 0));
        t.abort();
    }
}

#[test]
fn sim_cannot_adopt_kernel_sockets() {
    let event_loop = EventLoop::builder()
        .driver(DriverKind::Sim)
        .sim_seed(3)
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let err = event_loop
        .handle()
        .adopt_stream(OwnedFd::from(listener), Echo::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}
