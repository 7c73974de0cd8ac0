//! `Handle::set_wait_hook`: every wait that may block goes through the hook
//! (the Python face releases the GIL there), waits that cannot block skip it,
//! and a hook that runs the wait leaves the loop working as before.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use proactor::{DriverKind, EventLoop};

fn drivers() -> Vec<EventLoop> {
    let mut loops = vec![EventLoop::builder()
        .driver(DriverKind::Poll)
        .build()
        .unwrap()];
    match EventLoop::builder().driver(DriverKind::Uring).build() {
        Ok(l) => loops.push(l),
        Err(e) => eprintln!("uring skipped: {e}"),
    }
    loops.push(
        EventLoop::builder()
            .driver(DriverKind::Sim)
            .sim_seed(1)
            .build()
            .unwrap(),
    );
    loops
}

#[test]
fn blocking_waits_go_through_the_hook_and_busy_ones_do_not() {
    for event_loop in drivers() {
        let h = event_loop.handle();
        let (calls, inside) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(false)));
        let (c, i) = (calls.clone(), inside.clone());
        h.set_wait_hook(move |wait| {
            c.set(c.get() + 1);
            i.set(true);
            wait();
            i.set(false);
        });
        // A timer far enough that the loop must sleep for it.
        let fired = Rc::new(Cell::new(false));
        let (f, stopper, i) = (fired.clone(), h.clone(), inside.clone());
        h.call_later(Duration::from_millis(20), move || {
            assert!(!i.get(), "callbacks never run inside the hook");
            f.set(true);
            stopper.stop();
        });
        event_loop.run_forever().unwrap();
        assert!(fired.get());
        assert!(
            calls.get() >= 1,
            "{:?}: the sleep went through the hook",
            h.driver_kind()
        );

        // A busy loop (callbacks ready every turn) never sleeps: no hook.
        let before = calls.get();
        let n = Rc::new(Cell::new(0));
        fn again(h: proactor::Handle, n: Rc<Cell<u32>>) {
            n.set(n.get() + 1);
            if n.get() == 100 {
                h.stop();
            } else {
                let h2 = h.clone();
                h.call_soon(move || again(h2, n));
            }
        }
        let (h2, n2) = (h.clone(), n.clone());
        h.call_soon(move || again(h2, n2));
        event_loop.run_forever().unwrap();
        assert_eq!(n.get(), 100);
        assert_eq!(
            calls.get(),
            before,
            "{:?}: busy turns skip the hook",
            h.driver_kind()
        );
    }
}

#[test]
fn a_remote_wake_ends_a_hooked_wait_and_clearing_the_hook_works() {
    let event_loop = EventLoop::builder()
        .driver(DriverKind::Poll)
        .build()
        .unwrap();
    let h = event_loop.handle();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    h.set_wait_hook(move |wait| {
        c.set(c.get() + 1);
        wait();
    });
    let remote = h.remote();
    let stopper = h.clone();
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        remote.call_soon_threadsafe(|| {});
    });
    h.call_soon(move || {
        // Stop once the remote callback has come in.
        fn wait_for(h: proactor::Handle, left: u32) {
            if left == 0 || h.table_sizes().ready > 0 {
                h.stop();
            } else {
                let h2 = h.clone();
                h.call_later(Duration::from_millis(5), move || wait_for(h2, left - 1));
            }
        }
        wait_for(stopper, 200);
    });
    event_loop.run_forever().unwrap();
    thread.join().unwrap();
    assert!(calls.get() >= 1);
    h.clear_wait_hook();
    let before = calls.get();
    let stopper = h.clone();
    h.call_later(Duration::from_millis(5), move || stopper.stop());
    event_loop.run_forever().unwrap();
    assert_eq!(calls.get(), before);
}

/// A hook that schedules work through the loop's `RemoteHandle` once its
/// wait returned (proactor-py asks for a signal check after every sleep)
/// finds the loop awake: what it sends is taken in the same turn, and no
/// remote wake is left behind to end the next sleep at once. Ten sleeps
/// ended by another thread's callbacks take ten hooked waits, not twenty.
#[test]
fn posting_from_the_hook_after_the_wait_leaves_no_wake_behind() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    for event_loop in drivers() {
        let h = event_loop.handle();
        if h.driver_kind() == DriverKind::Sim {
            continue; // the simulator's clock does not wait for threads
        }
        let (remote, stopper) = (h.remote(), h.clone());
        let done = Arc::new(AtomicBool::new(false));
        let sleeps = Rc::new(Cell::new(0u32));
        let (s, d) = (sleeps.clone(), done.clone());
        h.set_wait_hook(move |wait| {
            s.set(s.get() + 1);
            wait();
            remote.call_soon_threadsafe(|| {});
            if d.load(Ordering::SeqCst) {
                stopper.stop();
            }
        });
        let (remote, d) = (h.remote(), done.clone());
        let thread = std::thread::spawn(move || {
            for i in 0..10 {
                std::thread::sleep(Duration::from_millis(10));
                d.store(i == 9, Ordering::SeqCst);
                remote.call_soon_threadsafe(|| {});
            }
        });
        event_loop.run_forever().unwrap();
        thread.join().unwrap();
        h.clear_wait_hook();
        eprintln!("{:?}: {} sleeps", h.driver_kind(), sleeps.get());
        // Ten wakes from the thread; a sleep may end early now and then (a
        // loaded machine), not after every wake.
        assert!(
            sleeps.get() <= 15,
            "{:?}: {} hooked waits for 10 remote wakes",
            h.driver_kind(),
            sleeps.get()
        );
    }
}
