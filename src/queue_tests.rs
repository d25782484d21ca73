//! Tests of `queue` (a file of their own to keep `queue.rs` short).

use super::*;
use bytes::Bytes;

fn job(n: usize, bytes: usize) -> Job {
    Job {
        body: Bytes::from(vec![b' '; bytes]),
        spans: vec![(0, 1); n],
        first_seq: 0,
        received_secs: 0,
        tenant: None,
        headers: Vec::new(),
        waiter: None,
        spooled: None,
    }
}

#[test]
fn requests_are_queued_whole_or_not_at_all() {
    let budget = Arc::new(Budget::new(10, 1000));
    let (tx, rx) = channel(budget.clone());
    tx.send(job(6, 100)).unwrap();
    assert_eq!(tx.send(job(5, 100)), Err(NoRoom::Overloaded));
    assert_eq!(budget.depth(), (6, 100));
    tx.send(job(4, 100)).unwrap();
    assert_eq!(tx.send(job(1, 1)), Err(NoRoom::Overloaded));
    let first = rx.recv().unwrap();
    budget.release(first.spans.len(), first.body.len());
    tx.send(job(1, 1)).unwrap();
    assert_eq!(budget.depth(), (5, 101));
}

#[test]
fn byte_bound_holds() {
    let budget = Arc::new(Budget::new(100, 250));
    let (tx, _rx) = channel(budget.clone());
    tx.send(job(1, 200)).unwrap();
    assert_eq!(tx.send(job(1, 51)), Err(NoRoom::Overloaded));
    assert_eq!(budget.reserve_bytes(51).unwrap_err(), NoRoom::Overloaded);
    assert_eq!(budget.reserve_bytes(50).unwrap().bytes(), 50);
}

#[test]
fn a_body_reservation_grows_shrinks_and_takes_its_payloads() {
    let budget = Arc::new(Budget::new(10, 1000));
    let mut r = budget.reserve_bytes(100).unwrap();
    r.grow_to(600).unwrap();
    assert_eq!(budget.depth(), (0, 600));
    assert_eq!(
        r.grow_to(1001).unwrap_err(),
        NoRoom::OverQueue {
            len: 1001,
            max: 1000
        }
    );
    let other = budget.reserve_bytes(400).unwrap();
    assert_eq!(r.grow_to(700).unwrap_err(), NoRoom::Overloaded);
    drop(other);
    r.shrink_to(250);
    assert_eq!(budget.depth(), (0, 250));
    assert_eq!(
        r.add_payloads(11).unwrap_err(),
        NoRoom::TooManyPayloads { n: 11, max: 10 }
    );
    r.add_payloads(3).unwrap();
    assert_eq!(budget.depth(), (3, 250));
    drop(r);
    assert_eq!(budget.depth(), (0, 0), "everything returned on drop");
}

#[test]
fn reservations_hold_room_until_queued_or_dropped() {
    let budget = Arc::new(Budget::new(10, 1000));
    let (tx, rx) = channel(budget.clone());
    let r = tx.reserve(6, 100).unwrap();
    assert_eq!(tx.reserve(5, 1).unwrap_err(), NoRoom::Overloaded);
    drop(r);
    assert_eq!(budget.depth(), (0, 0));
    let r = tx.reserve(2, 2).unwrap();
    tx.send_reserved(job(2, 2), r).unwrap();
    assert_eq!(budget.depth(), (2, 2), "the queued job holds the room");
    drop(rx);
    let r = tx.reserve(1, 1).unwrap();
    assert_eq!(tx.send_reserved(job(1, 1), r), Err(NoRoom::Closed));
    assert_eq!(budget.depth(), (2, 2));
}

#[test]
fn unverified_requests_hold_at_most_their_share() {
    let budget = Arc::new(Budget::new(10, 1000));
    let share = Arc::new(Share::new(250));
    let a = budget.reserve_unverified_bytes(200, &share).unwrap();
    assert_eq!(
        budget.reserve_unverified_bytes(100, &share).unwrap_err(),
        NoRoom::UnverifiedFull
    );
    assert_eq!(
        budget.reserve_unverified_bytes(251, &share).unwrap_err(),
        NoRoom::OverUnverified { len: 251, max: 250 }
    );
    // Verified requests still find the rest of the budget.
    let mut known = budget.reserve_bytes(700).unwrap();
    known.add_payloads(1).unwrap();
    let mut b = budget.reserve_unverified_bytes(50, &share).unwrap();
    assert_eq!(b.grow_to(51).unwrap_err(), NoRoom::UnverifiedFull);
    drop(a);
    b.grow_to(100).unwrap();
    assert_eq!(share.held(), 100);
    b.verified();
    assert_eq!(share.held(), 0, "a verified request leaves the share");
    assert_eq!(budget.depth(), (1, 800), "and stays in the budget");
    b.grow_to(250).unwrap();
    assert_eq!(share.held(), 0);
    let c = budget.reserve_unverified_bytes(10, &share).unwrap();
    drop((b, c, known));
    assert_eq!(share.held(), 0);
    assert_eq!(budget.depth(), (0, 0));
}

#[test]
fn closed_queue_means_shutting_down() {
    let budget = Arc::new(Budget::new(10, 1000));
    let (tx, rx) = channel(budget.clone());
    drop(rx);
    assert_eq!(tx.send(job(1, 1)), Err(NoRoom::Closed));
    assert_eq!(budget.depth(), (0, 0));
}
