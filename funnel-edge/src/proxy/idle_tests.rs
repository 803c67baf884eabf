#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Conn, IdleList};

/// A connection's state as the list sees it, shared with the test so it can change meanwhile.
#[derive(Debug, Clone)]
struct State {
    id: u32,
    closed: Rc<Cell<bool>>,
    ready: Rc<Cell<bool>>,
}

impl State {
    fn new(id: u32) -> Self {
        Self {
            id,
            closed: Rc::new(Cell::new(false)),
            ready: Rc::new(Cell::new(true)),
        }
    }
}

impl Conn for State {
    fn is_closed(&mut self) -> bool {
        self.closed.get()
    }
    fn is_ready(&self) -> bool {
        self.ready.get()
    }
}

const TIMEOUT: Duration = Duration::from_secs(90);

fn ids(list: &mut IdleList<State>, now: Instant) -> Vec<u32> {
    std::iter::from_fn(|| list.take(now, TIMEOUT))
        .map(|c| c.id)
        .collect()
}

#[test]
fn the_most_recently_used_connection_is_taken_first() {
    let t0 = Instant::now();
    let mut list = IdleList::default();
    for id in 1..=3 {
        list.put(State::new(id), t0, TIMEOUT, 8);
    }
    assert_eq!(list.len(), 3);
    assert_eq!(ids(&mut list, t0), [3, 2, 1]);
    assert!(list.is_empty());
}

#[test]
fn closed_and_timed_out_connections_are_never_taken_and_are_dropped_on_the_way() {
    let t0 = Instant::now();
    let mut list = IdleList::default();
    let old = State::new(1);
    let closed = State::new(2);
    let fresh = State::new(3);
    list.put(old, t0, TIMEOUT, 8);
    list.put(closed.clone(), t0 + Duration::from_secs(50), TIMEOUT, 8);
    list.put(fresh, t0 + Duration::from_secs(60), TIMEOUT, 8);
    closed.closed.set(true);

    // At 95 s the first is 95 s idle (past the timeout), the third 35 s.
    let now = t0 + Duration::from_secs(95);
    assert_eq!(list.take(now, TIMEOUT).unwrap().id, 3);
    assert!(list.take(now, TIMEOUT).is_none());
    assert!(list.is_empty(), "the stale ones were dropped");

    // Idle for exactly the timeout is too long.
    list.put(State::new(4), t0, TIMEOUT, 8);
    assert!(list.take(t0 + TIMEOUT, TIMEOUT).is_none());
}

#[test]
fn an_open_connection_not_ready_yet_is_kept_for_later() {
    let t0 = Instant::now();
    let mut list = IdleList::default();
    let busy = State::new(2);
    list.put(State::new(1), t0, TIMEOUT, 8);
    list.put(busy.clone(), t0, TIMEOUT, 8);
    busy.ready.set(false);
    assert_eq!(list.take(t0, TIMEOUT).unwrap().id, 1);
    assert!(list.take(t0, TIMEOUT).is_none());
    assert_eq!(list.len(), 1, "kept, not dropped");
    busy.ready.set(true);
    assert_eq!(list.take(t0, TIMEOUT).unwrap().id, 2);
}

#[test]
fn at_most_max_are_kept_and_a_full_list_makes_room_by_dropping_stale_ones() {
    let t0 = Instant::now();
    let mut list = IdleList::default();
    let gone = State::new(1);
    list.put(gone.clone(), t0, TIMEOUT, 2);
    list.put(State::new(2), t0, TIMEOUT, 2);
    list.put(State::new(3), t0, TIMEOUT, 2);
    assert_eq!(list.len(), 2, "full: the third is not kept");

    gone.closed.set(true);
    list.put(State::new(4), t0, TIMEOUT, 2);
    assert_eq!(ids(&mut list, t0), [4, 2]);

    let closed = State::new(5);
    closed.closed.set(true);
    list.put(closed, t0, TIMEOUT, 2);
    assert!(list.is_empty(), "a closed connection is not kept");
}

#[test]
fn a_sweep_drops_every_stale_connection_and_keeps_the_rest_in_order() {
    let t0 = Instant::now();
    let mut list = IdleList::default();
    let closed = State::new(2);
    list.put(State::new(1), t0, TIMEOUT, 8);
    list.put(closed.clone(), t0 + Duration::from_secs(30), TIMEOUT, 8);
    list.put(State::new(3), t0 + Duration::from_secs(30), TIMEOUT, 8);
    list.put(State::new(4), t0 + Duration::from_secs(40), TIMEOUT, 8);
    closed.closed.set(true);
    let now = t0 + Duration::from_secs(100);
    list.sweep(now, TIMEOUT);
    assert_eq!(list.len(), 2);
    assert_eq!(ids(&mut list, now), [4, 3]);
}
