//! Live deliveries of one connection's sends, in the order the sends arrived.
//!
//! A connection's sends are committed in the order they arrived (the store
//! keeps issue order, or the gateway makes them take turns). Their live
//! deliveries must leave in that order too, but the futures that make them
//! run in whatever order they are polled: a send whose commit was already
//! done when it was first polled (its writer ran in between, on the same
//! core) delivered at once, ahead of an earlier send woken but not yet
//! polled. So each send takes a [`Turn`] when its frame is read, and
//! delivers through it: at once if every earlier turn has delivered, else
//! the delivery waits and is run by the turn that completes the run before
//! it. A turn dropped without delivering (the send failed) gives its place
//! up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// A delivery waiting for its turn.
pub type Deliver = Box<dyn FnOnce() + Send>;

/// The turns of one connection's sends.
#[derive(Default)]
pub struct DeliveryOrder {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The next ticket to hand out.
    issued: u64,
    /// The ticket whose delivery goes next.
    next: u64,
    /// Later turns that finished first: their deliveries (`None`: nothing
    /// to deliver).
    waiting: BTreeMap<u64, Option<Deliver>>,
}

impl State {
    /// `ticket`'s send is done: runs its delivery if it is next in line
    /// (then the waiting ones that follow), else keeps it for its turn.
    fn settle(&mut self, ticket: u64, deliver: Option<Deliver>) {
        if self.next == ticket {
            if let Some(deliver) = deliver {
                deliver();
            }
            self.next += 1;
            self.run_ready();
        } else {
            self.waiting.insert(ticket, deliver);
        }
    }

    /// Runs the waiting deliveries that are next in line.
    fn run_ready(&mut self) {
        while let Some(deliver) = self.waiting.remove(&self.next) {
            self.next += 1;
            if let Some(deliver) = deliver {
                deliver();
            }
        }
    }
}

impl DeliveryOrder {
    /// A new connection's order.
    pub fn new() -> Arc<Self> {
        Arc::new(DeliveryOrder::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next turn; take turns in the order the sends arrived.
    pub fn turn(self: &Arc<Self>) -> Turn {
        let mut state = self.lock();
        let ticket = state.issued;
        state.issued += 1;
        Turn {
            order: Some(Arc::clone(self)),
            ticket,
        }
    }
}

/// A send's place in its connection's order of deliveries.
pub struct Turn {
    order: Option<Arc<DeliveryOrder>>,
    ticket: u64,
}

impl Turn {
    /// Delivers in turn: runs `now` at once if every earlier turn is done
    /// (then the deliveries that waited for this one), else keeps `later()`
    /// to be run when they are. Deliveries run under the connection's order
    /// lock: they must not block (hub routing does not).
    pub fn deliver(mut self, now: impl FnOnce(), later: impl FnOnce() -> Deliver) {
        let Some(order) = self.order.take() else {
            return;
        };
        let mut state = order.lock();
        if state.next == self.ticket {
            now();
            state.next += 1;
            state.run_ready();
        } else {
            state.waiting.insert(self.ticket, Some(later()));
        }
    }

    /// As [`Turn::deliver`], for a delivery that owns what it needs.
    pub fn deliver_boxed(mut self, deliver: Deliver) {
        if let Some(order) = self.order.take() {
            order.lock().settle(self.ticket, Some(deliver));
        }
    }
}

impl Drop for Turn {
    /// A turn that delivered nothing gives its place up.
    fn drop(&mut self) {
        if let Some(order) = self.order.take() {
            order.lock().settle(self.ticket, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Log = Arc<Mutex<Vec<u32>>>;

    fn deliver(turn: Turn, log: &Log, n: u32) {
        let (a, b) = (Arc::clone(log), Arc::clone(log));
        turn.deliver(
            move || a.lock().expect("log").push(n),
            move || Box::new(move || b.lock().expect("log").push(n)),
        );
    }

    #[test]
    fn deliveries_follow_the_turns_whatever_order_they_finish_in() {
        let order = DeliveryOrder::new();
        let log: Log = Arc::default();
        let turns: Vec<Turn> = (0..6).map(|_| order.turn()).collect();
        let mut turns: Vec<Option<Turn>> = turns.into_iter().map(Some).collect();
        let mut take = |i: usize| turns[i].take().expect("turn");
        deliver(take(2), &log, 2);
        deliver(take(1), &log, 1);
        assert!(
            log.lock().expect("log").is_empty(),
            "turn 0 has not delivered"
        );
        // Turn 3's send failed: its place goes.
        drop(take(3));
        deliver(take(0), &log, 0);
        assert_eq!(*log.lock().expect("log"), vec![0, 1, 2]);
        deliver(take(5), &log, 5);
        deliver(take(4), &log, 4);
        assert_eq!(*log.lock().expect("log"), vec![0, 1, 2, 4, 5]);
        // In order, each delivers at once.
        let t = order.turn();
        deliver(t, &log, 6);
        assert_eq!(log.lock().expect("log").last(), Some(&6));
    }
}
