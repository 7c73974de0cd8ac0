//! L1 and L2: callback order, timers, run_until_complete, thread-safe wake-up.

mod util;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use proactor::RunError;
use util::*;

/// L1: call_soon callbacks run in FIFO order, including ones scheduled by callbacks.
#[test]
fn l1_call_soon_is_fifo() {
    on_every_driver("l1_call_soon_is_fifo", |lp| {
        let h = lp.handle();
        let order = Rc::new(RefCell::new(Vec::new()));
        for i in 0..100 {
            let o = order.clone();
            let h2 = h.clone();
            h.call_soon(move || {
                o.borrow_mut().push(i);
                if i == 0 {
                    let o = o.clone();
                    h2.call_soon(move || o.borrow_mut().push(1000));
                }
            });
        }
        let done = Rc::new(std::cell::Cell::new(false));
        let d = done.clone();
        let hh = h.clone();
        h.call_soon(move || {
            d.set(true);
            hh.call_soon({
                let hh = hh.clone();
                move || hh.stop()
            });
        });
        lp.run_forever().unwrap();
        let mut expected: Vec<i32> = (0..100).collect();
        expected.push(1000);
        assert_eq!(*order.borrow(), expected);
    });
}

/// L1: timers never fire early (on the loop clock, and on the wall clock for
/// real drivers), and equal deadlines fire in scheduling order.
#[test]
fn l1_timers_never_fire_early() {
    on_every_driver("l1_timers_never_fire_early", |lp| {
        let h = lp.handle();
        let fired = Rc::new(RefCell::new(Vec::new()));
        let start_loop = h.now();
        let start_wall = Instant::now();
        let real = h.driver_kind() != proactor::DriverKind::Sim;
        for (i, ms) in [30u64, 10, 20, 10, 0, 50].into_iter().enumerate() {
            let f = fired.clone();
            let h2 = h.clone();
            h.call_later(Duration::from_millis(ms), move || {
                let late_loop = h2.now().duration_since(start_loop);
                assert!(
                    late_loop >= Duration::from_millis(ms),
                    "timer {i} early on loop clock"
                );
                if real {
                    assert!(
                        start_wall.elapsed() >= Duration::from_millis(ms),
                        "timer {i} early on wall clock"
                    );
                }
                f.borrow_mut().push(i);
            });
        }
        let cancelled = h.call_later(Duration::from_millis(5), || panic!("cancelled timer ran"));
        assert!(cancelled.cancel());
        let h2 = h.clone();
        h.call_later(Duration::from_millis(60), move || h2.stop());
        lp.run_forever().unwrap();
        assert_eq!(*fired.borrow(), vec![4, 1, 3, 2, 0, 5]);
    });
}

/// L1: run_until_complete reports a loop stopped before its future completed.
#[test]
fn l1_run_until_complete_reports_stop() {
    on_every_driver("l1_run_until_complete_reports_stop", |lp| {
        let h = lp.handle();
        let h2 = h.clone();
        h.call_later(Duration::from_millis(5), move || h2.stop());
        let hh = h.clone();
        let r = lp.run_until_complete(async move {
            sleep(&hh, Duration::from_secs(3600)).await;
            1
        });
        assert!(matches!(r, Err(RunError::Stopped)), "got {r:?}");
        // The loop is still usable afterwards.
        let hh = h.clone();
        let v = lp
            .run_until_complete(async move {
                sleep(&hh, Duration::from_millis(1)).await;
                7
            })
            .unwrap();
        assert_eq!(v, 7);
        // Spawned tasks and their join handles.
        let hh = h.clone();
        let j = h.spawn(async move {
            sleep(&hh, Duration::from_millis(2)).await;
            "done"
        });
        assert_eq!(lp.run_until_complete(j).unwrap().unwrap(), "done");
    });
}

/// Whether thread `tid` of this process is asleep in the kernel (state `S`
/// in `/proc/self/task/<tid>/stat`).
fn asleep(tid: libc::pid_t) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // "tid (comm) S ...": the state follows the last ')'.
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('S'))
}

/// L2: call_soon_threadsafe wakes a loop blocked in the kernel with nothing
/// else to do (no timers, no I/O). The other thread calls only once it sees
/// the loop's thread asleep in the kernel, so the wake-up is what ends the
/// wait, not a check the loop would have made anyway.
#[test]
fn l2_call_soon_threadsafe_wakes_blocked_loop() {
    on_every_driver("l2_call_soon_threadsafe_wakes_blocked_loop", |lp| {
        let h = lp.handle();
        let remote = h.remote();
        let (tx, rx) = futures_channel::oneshot::channel::<Duration>();
        // SAFETY: gettid(2) has no preconditions and touches no memory.
        let loop_tid = unsafe { libc::gettid() };
        let t = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            // Twice in a row, a millisecond apart: blocked, not between steps.
            let mut seen = 0;
            while seen < 2 {
                assert!(Instant::now() < deadline, "the loop never blocked");
                seen = if asleep(loop_tid) { seen + 1 } else { 0 };
                std::thread::sleep(Duration::from_millis(1));
            }
            let called = Instant::now();
            remote.call_soon_threadsafe(move || {
                tx.send(called.elapsed()).expect("the loop waits for it");
            });
        });
        let latency = lp.run_until_complete(rx).unwrap().unwrap();
        t.join().unwrap();
        assert!(
            latency < Duration::from_secs(1),
            "L2: the blocked loop woke up {latency:?} after call_soon_threadsafe"
        );
    });
}

/// L2: many threads at once; every callback runs exactly once.
#[test]
fn l2_many_threads_each_callback_once() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    on_every_driver("l2_many_threads_each_callback_once", |lp| {
        let h = lp.handle();
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        // The 4000th callback completes the future the loop waits on: no
        // timer polls (on sim, loop time would race ahead of the threads).
        let (tx, rx) = futures_channel::oneshot::channel::<()>();
        let tx = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let r = h.remote();
                let (c, tx) = (count.clone(), tx.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let (c, tx) = (c.clone(), tx.clone());
                        r.call_soon_threadsafe(move || {
                            if c.fetch_add(1, SeqCst) + 1 == 4000 {
                                let tx = tx.lock().unwrap().take().expect("once");
                                tx.send(()).unwrap();
                            }
                        });
                    }
                })
            })
            .collect();
        lp.run_until_complete(rx).unwrap().unwrap();
        for t in threads {
            t.join().unwrap();
        }
        // A callback run twice would show by now.
        let hh = h.clone();
        lp.run_until_complete(async move { next_turn(&hh).await })
            .unwrap();
        assert_eq!(count.load(SeqCst), 4000);
    });
}

/// L1: a timer "never" (`Duration::MAX`) is accepted, never fires, and can be
/// cancelled; the loop keeps running its other timers (no `Instant` overflow).
#[test]
fn l1_call_later_duration_max_never_fires_and_never_panics() {
    on_every_driver("l1_call_later_duration_max", |lp| {
        let h = lp.handle();
        let never = h.call_later(Duration::MAX, || panic!("a Duration::MAX timer fired"));
        let _also_never = h.call_later(Duration::MAX, || panic!("a Duration::MAX timer fired"));
        let ran = Rc::new(std::cell::Cell::new(false));
        let r = ran.clone();
        let h2 = h.clone();
        h.call_later(Duration::from_millis(5), move || {
            r.set(true);
            h2.stop();
        });
        lp.run_forever().unwrap();
        assert!(ran.get(), "the ordinary timer ran");
        assert!(never.cancel(), "the far timer was still pending");
        assert_eq!(h.table_sizes().timers, 1, "one far timer left");
    });
}

/// asyncio's idiom: `stop()` before `run_forever()` runs exactly one
/// iteration: what is ready runs, what it schedules does not.
#[test]
fn l1_stop_before_run_forever_runs_exactly_one_iteration() {
    on_every_driver("l1_stop_before_run_forever", |lp| {
        let h = lp.handle();
        let order = Rc::new(RefCell::new(Vec::new()));
        let (o, h2) = (order.clone(), h.clone());
        h.call_soon(move || {
            o.borrow_mut().push("first");
            let o = o.clone();
            h2.call_soon(move || o.borrow_mut().push("second"));
        });
        h.stop();
        lp.run_forever().unwrap();
        assert_eq!(*order.borrow(), vec!["first"], "one iteration");
        h.stop();
        lp.run_forever().unwrap();
        assert_eq!(*order.borrow(), vec!["first", "second"], "and one more");
    });
}

/// L4: running or closing the loop from inside one of its callbacks or
/// tasks is an error (`RunError::Running`), never a nested run.
#[test]
fn l4_run_or_close_from_inside_the_loop_is_an_error() {
    on_every_driver_shared("l4_run_from_inside", |lp| {
        let h = lp.handle();
        let results = Rc::new(RefCell::new(Vec::new()));
        let (r, inner) = (results.clone(), lp.clone());
        h.call_soon(move || {
            let mut r = r.borrow_mut();
            r.push(format!("{:?}", inner.run_until_complete(async { 1 }).err()));
            r.push(format!(
                "{:?}",
                inner.run_forever().err().map(|e| e.to_string())
            ));
            r.push(format!(
                "{:?}",
                inner.handle().run_once().err().map(|e| e.to_string())
            ));
            r.push(format!("{:?}", inner.close().err()));
            inner.handle().stop();
        });
        lp.run_forever().unwrap();
        let results = results.borrow();
        assert_eq!(results[0], "Some(Running)");
        assert!(results[1].contains("already running"), "{}", results[1]);
        assert!(results[2].contains("already running"), "{}", results[2]);
        assert_eq!(results[3], "Some(Running)");
        assert!(!lp.handle().is_closed(), "close() from inside did nothing");
        assert_eq!(lp.run_until_complete(async { 2 }).unwrap(), 2);
    });
}
