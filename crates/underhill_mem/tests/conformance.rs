//! Conformance of `MemoryRegistrar` against `registrar.json`, the call sequences recorded by
//! running the original registrar.
//!
//! Every case builds a layout, a registrar with the case's offset and a callback that records
//! each range and fails when it overlaps one of the case's fail ranges, then makes the calls in
//! order, recording each call's callbacks and result, and stopping after a call that panics.
//! The cases are checked twice: through the synchronous `register`, and through
//! `register_async` with a callback that always answers at once (each call must then complete
//! on its first poll).

use conformance_vectors::{catch, hex, load, range_json, ranges, raw_range, Tally};
use memory_range::MemoryRange;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use underhill_mem::{AsyncFromSync, MemoryRegistrar};
use vm_topology::memory::MemoryLayout;

fn build_layout(input: &Value) -> MemoryLayout {
    conformance_vectors::build_layout(input).expect("the vectors' layouts always succeed")
}

#[derive(Clone, Copy)]
enum Path {
    Sync,
    AsyncReady,
}

struct NoopWaker;

impl Wake for NoopWaker {
    fn wake(self: Arc<Self>) {}
}

/// Polls `future` once; an all-Ready registration must complete on its first poll.
fn first_poll<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(NoopWaker));
    match pin!(future).poll(&mut Context::from_waker(&waker)) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("register_async did not complete on its first poll"),
    }
}

fn result_json(result: Result<(), u64>) -> Value {
    match result {
        Ok(()) => json!({ "ok": null }),
        Err(address) => json!({ "err": conformance_vectors::to_hex(address) }),
    }
}

fn run_case(case: &Value, path: Path) -> Value {
    let input = &case["input"];
    let layout = build_layout(&input["layout"]);
    let expected_ram: Vec<MemoryRange> = ranges(&input["layout_ram"]);
    let ram: Vec<MemoryRange> = layout.ram().iter().map(|entry| entry.range).collect();
    assert_eq!(ram, expected_ram, "case {}: layout RAM differs", case["id"]);

    let fail_ranges: Vec<(u64, u64)> = input["fail_ranges"]
        .as_array()
        .expect("fail_ranges")
        .iter()
        .map(raw_range)
        .collect();
    let log: Rc<RefCell<Vec<Value>>> = Rc::default();
    let callback = {
        let log = log.clone();
        move |range: MemoryRange| {
            let fail = fail_ranges
                .iter()
                .any(|&(start, end)| range.end() > start && range.start() < end);
            log.borrow_mut()
                .push(json!({ "range": range_json(&range), "fail": fail }));
            if fail {
                Err(io::Error::other("registration refused"))
            } else {
                Ok(())
            }
        }
    };
    let offset = hex(&input["registration_offset"]);
    let sync_registrar;
    let async_registrar;
    let register: Box<dyn Fn(u64, u64) -> Result<(), u64>> = match path {
        Path::Sync => {
            sync_registrar = MemoryRegistrar::new(&layout, offset, callback);
            Box::new(|address, len| sync_registrar.register(address, len))
        }
        Path::AsyncReady => {
            async_registrar = MemoryRegistrar::new_async(&layout, offset, AsyncFromSync(callback));
            Box::new(|address, len| first_poll(async_registrar.register_async(address, len)))
        }
    };

    let mut calls = Vec::new();
    for call in input["calls"].as_array().expect("calls") {
        let (address, len) = (hex(&call["address"]), hex(&call["len"]));
        let outcome = catch(|| register(address, len));
        let callbacks: Vec<Value> = log.borrow_mut().drain(..).collect();
        let panicked = outcome.is_err();
        let result = match outcome {
            Ok(result) => result_json(result),
            Err(message) => json!({ "panic": true, "panic_message": message }),
        };
        calls.push(json!({ "callbacks": callbacks, "result": result }));
        if panicked {
            break;
        }
    }
    json!({ "calls": calls })
}

fn check_all(path: Path) {
    let file = load("registrar.json");
    let mut tally = Tally::new(&file);
    for case in &file.cases {
        assert_eq!(case["op"], "registrar");
        let actual = run_case(case, path);
        tally.check(case, &actual);
    }
    tally.finish();
}

#[test]
fn registrar_sync() {
    check_all(Path::Sync);
}

#[test]
fn registrar_async_ready() {
    check_all(Path::AsyncReady);
}
