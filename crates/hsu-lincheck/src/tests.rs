//! Tests of the linearizability checker: known-good and known-bad histories.

use super::*;

const OK: Outcome = Outcome::Ok;
const FAIL: Outcome = Outcome::Failed;
const IND: Outcome = Outcome::Indeterminate;

fn op(client: u64, start: u64, end: u64, op: Op, outcome: Outcome) -> Operation {
    Operation { client, start, end, op, outcome }
}

fn r(key: &str, value: Option<&str>) -> Op {
    Op::Read { key: key.into(), value: value.map(Into::into) }
}

fn w(key: &str, value: &str) -> Op {
    Op::Write { key: key.into(), value: value.into() }
}

fn del(key: &str) -> Op {
    Op::Delete { key: key.into() }
}

fn cas(key: &str, expected: Option<&str>, new: &str, swapped: bool) -> Op {
    Op::Cas { key: key.into(), expected: expected.map(Into::into), new: new.into(), swapped }
}

fn assert_linearizable(history: &[Operation]) {
    assert_eq!(check(history), Verdict::Linearizable, "{history:#?}");
}

/// Asserts a `NotLinearizable` verdict for `key` and returns the reported ops and reason.
fn assert_fails_on(history: &[Operation], key: &str) -> (Vec<usize>, String) {
    match check(history) {
        Verdict::NotLinearizable { key: bad, ops, reason } => {
            assert_eq!(bad, key.as_bytes(), "wrong key; reason: {reason}");
            (ops, reason)
        }
        other => panic!("expected NotLinearizable on {key:?}, got {other:?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn sequential_write_then_read() {
    assert_linearizable(&[op(1, 0, 10, w("x", "a"), OK), op(2, 20, 30, r("x", Some("a")), OK)]);
}

#[test]
fn concurrent_read_may_see_old_or_new_value() {
    for seen in [Some("a"), Some("b")] {
        assert_linearizable(&[
            op(1, 0, 10, w("x", "a"), OK),
            op(1, 20, 50, w("x", "b"), OK),
            op(2, 25, 40, r("x", seen), OK),
        ]);
    }
    // The read may also precede a write that it overlaps even if listed after it.
    assert_linearizable(&[op(1, 0, 50, w("x", "a"), OK), op(2, 10, 20, r("x", None), OK)]);
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // A return and a call with the same timestamp cannot be ordered, so the read may precede
    // the write; one nanosecond later it may not.
    assert_linearizable(&[op(1, 0, 10, w("x", "a"), OK), op(2, 10, 20, r("x", None), OK)]);
    assert_fails_on(&[op(1, 0, 10, w("x", "a"), OK), op(2, 11, 20, r("x", None), OK)], "x");
}

#[test]
fn cas_chain_from_several_clients() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "0"), OK),
        op(1, 20, 60, cas("x", Some("0"), "1", true), OK),
        op(2, 25, 55, cas("x", Some("0"), "2", false), OK),
        op(3, 30, 70, cas("x", Some("1"), "3", true), OK),
        op(2, 80, 90, cas("x", Some("1"), "4", false), OK),
        op(3, 85, 95, cas("x", Some("3"), "5", true), OK),
        op(1, 100, 110, r("x", Some("5")), OK),
    ]);
}

#[test]
fn failed_cas_overlapping_the_write_that_made_it_fail() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "a"), OK),
        op(1, 20, 40, w("x", "b"), OK),
        op(2, 30, 50, cas("x", Some("a"), "c", false), OK),
        op(2, 60, 70, r("x", Some("b")), OK),
    ]);
}

#[test]
fn indeterminate_write_observed_later() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "a"), OK),
        op(1, 20, 0, w("x", "b"), IND),
        op(2, 1_000, 1_010, r("x", Some("b")), OK),
    ]);
}

#[test]
fn indeterminate_write_never_observed() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "a"), OK),
        op(1, 20, 0, w("x", "b"), IND),
        op(2, 1_000, 1_010, r("x", Some("a")), OK),
        op(2, 1_020, 1_030, r("x", Some("a")), OK),
    ]);
}

#[test]
fn indeterminate_write_cannot_take_effect_before_its_start() {
    assert_fails_on(&[op(2, 0, 10, r("x", Some("b")), OK), op(1, 20, 30, w("x", "b"), IND)], "x");
}

#[test]
fn indeterminate_cas_that_swapped() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "a"), OK),
        op(1, 20, 30, cas("x", Some("a"), "b", false), IND),
        op(2, 100, 110, r("x", Some("b")), OK),
    ]);
}

#[test]
fn indeterminate_cas_that_did_not_swap() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "a"), OK),
        op(1, 20, 30, cas("x", Some("a"), "b", true), IND),
        op(2, 100, 110, r("x", Some("a")), OK),
    ]);
}

#[test]
fn indeterminate_cas_cannot_swap_when_compare_fails() {
    assert_fails_on(
        &[
            op(1, 0, 10, w("x", "a"), OK),
            op(1, 20, 30, cas("x", Some("z"), "b", true), IND),
            op(2, 100, 110, r("x", Some("b")), OK),
        ],
        "x",
    );
}

#[test]
fn delete_then_read_absent() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "a"), OK),
        op(1, 20, 30, del("x"), OK),
        op(2, 40, 50, r("x", None), OK),
        op(2, 60, 70, cas("x", None, "b", true), OK),
    ]);
}

#[test]
fn failed_and_indeterminate_reads_are_ignored() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "a"), FAIL),
        op(2, 20, 30, r("x", Some("zzz")), IND),
        op(2, 40, 50, r("x", Some("zzz")), FAIL),
        op(3, 60, 70, r("x", None), OK),
    ]);
}

#[test]
fn end_before_start_does_not_panic() {
    assert_linearizable(&[op(1, 50, 10, w("x", "a"), OK), op(2, 60, 70, r("x", Some("a")), OK)]);
}

#[test]
fn multi_key_history_where_every_key_is_fine() {
    assert_linearizable(&[
        op(1, 0, 10, w("x", "a"), OK),
        op(2, 5, 15, w("y", "b"), OK),
        op(1, 20, 30, r("y", Some("b")), OK),
        op(2, 20, 30, r("x", Some("a")), OK),
        op(3, 25, 40, cas("x", Some("a"), "c", true), OK),
        op(3, 50, 60, r("x", Some("c")), OK),
    ]);
}

#[test]
fn stale_read_after_completed_write() {
    let (ops, reason) = assert_fails_on(
        &[op(1, 0, 10, w("x", "a"), OK), op(1, 20, 30, w("x", "b"), OK), op(2, 40, 50, r("x", Some("a")), OK)],
        "x",
    );
    assert_eq!(ops, vec![0, 1, 2]);
    assert!(reason.contains("#2"), "{reason}");
}

#[test]
fn lost_update_two_cas_from_same_expected_value() {
    assert_fails_on(
        &[
            op(1, 0, 10, w("x", "0"), OK),
            op(1, 20, 30, cas("x", Some("0"), "1", true), OK),
            op(2, 40, 50, cas("x", Some("0"), "2", true), OK),
        ],
        "x",
    );
}

#[test]
fn read_of_a_value_never_written() {
    assert_fails_on(&[op(1, 0, 10, w("x", "a"), OK), op(2, 5, 15, r("x", Some("ghost")), OK)], "x");
}

#[test]
fn read_goes_back_to_an_older_value() {
    assert_fails_on(
        &[
            op(1, 0, 10, w("x", "a"), OK),
            op(1, 20, 100, w("x", "b"), OK),
            op(2, 30, 40, r("x", Some("b")), OK),
            op(3, 50, 60, r("x", Some("a")), OK),
        ],
        "x",
    );
}

#[test]
fn cas_reported_not_swapped_although_value_matched() {
    assert_fails_on(&[op(1, 0, 10, w("x", "a"), OK), op(2, 20, 30, cas("x", Some("a"), "b", false), OK)], "x");
}

#[test]
fn multi_key_history_names_the_only_bad_key() {
    let (ops, _) = assert_fails_on(
        &[
            op(1, 0, 10, w("a", "1"), OK),
            op(1, 0, 10, w("m", "1"), OK),
            op(2, 0, 10, w("z", "1"), OK),
            op(1, 20, 30, r("a", Some("1")), OK),
            op(2, 20, 30, r("m", Some("2")), OK),
            op(3, 20, 30, r("z", Some("1")), OK),
        ],
        "m",
    );
    assert_eq!(ops, vec![1, 4]);
}

#[test]
fn long_sequential_history_does_not_overflow() {
    let history: Vec<Operation> =
        (0..5_000u64).map(|i| op(1, i * 10, i * 10 + 5, w("x", &i.to_string()), OK)).collect();
    assert_linearizable(&history);
}

/// A xorshift64 generator so the generated histories are reproducible without dependencies.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Simulates clients against a real sequential register: each operation gets a random interval,
/// a linearization point inside it, and a result computed by applying all operations in point
/// order. Such a history is linearizable by construction.
fn generate(seed: u64, clients: u64, per_client: u64, keys: u64) -> Vec<Operation> {
    let mut rng = XorShift(seed);
    let mut history = Vec::new();
    let mut points = Vec::new();
    for client in 0..clients {
        let mut time = rng.below(100);
        for _ in 0..per_client {
            let start = time + rng.below(50);
            let end = start + 1 + rng.below(300);
            points.push((start + rng.below(end - start + 1), history.len()));
            let key = format!("k{}", rng.below(keys));
            let roll = rng.below(100);
            let outcome = match rng.below(200) {
                0 => IND,
                1 => FAIL,
                _ => OK,
            };
            let op_ = match roll {
                0..=39 => r(&key, None),
                40..=64 => w(&key, ""),
                65..=89 => cas(&key, None, "", false),
                _ => del(&key),
            };
            history.push(op(client, start, end, op_, outcome));
            time = end + 1;
        }
    }
    points.sort_unstable();
    let mut register: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut written = 0u64;
    for (_, index) in points {
        let operation = &mut history[index];
        // Indeterminate operations take effect half of the time; failed ones never do.
        let applies = match operation.outcome {
            Outcome::Ok => true,
            Outcome::Failed => false,
            Outcome::Indeterminate => rng.below(2) == 0,
        };
        written += 1;
        let fresh = format!("v{written}").into_bytes();
        match &mut operation.op {
            Op::Read { key, value } if applies => *value = register.get(key).cloned(),
            Op::Write { key, value } => {
                *value = fresh;
                if applies {
                    register.insert(key.clone(), value.clone());
                }
            }
            Op::Delete { key } if applies => {
                register.remove(key);
            }
            Op::Cas { key, expected, new, swapped } => {
                let current = register.get(key).cloned();
                *expected = match rng.below(4) {
                    0 => None,
                    1 => Some(format!("v{}", rng.below(written)).into_bytes()),
                    _ => current.clone(),
                };
                *new = fresh;
                *swapped = applies && *expected == current;
                if *swapped {
                    register.insert(key.clone(), new.clone());
                }
            }
            _ => {}
        }
    }
    history
}

#[test]
fn generated_history_is_linearizable_and_corruption_is_caught() {
    let mut history = generate(0x9e37_79b9_7f4a_7c15, 6, 340, 5);
    assert!(history.len() >= 2_000);
    assert_linearizable(&history);

    let index = (history.len() / 2..history.len())
        .find(|&i| matches!(history[i].op, Op::Read { .. }) && history[i].outcome == OK)
        .expect("the generator produces definite reads");
    let key = match &mut history[index].op {
        Op::Read { key, value } => {
            *value = Some(b"corrupted".to_vec());
            String::from_utf8(key.clone()).unwrap()
        }
        _ => unreachable!(),
    };
    let (ops, reason) = assert_fails_on(&history, &key);
    assert!(ops.contains(&index));
    assert!(!reason.is_empty());
}

#[test]
fn generated_histories_with_other_seeds_are_linearizable() {
    for seed in [1, 42, 0xdead_beef] {
        assert_linearizable(&generate(seed, 8, 100, 3));
    }
}

#[test]
fn tiny_budget_gives_unknown() {
    let history = generate(7, 4, 50, 1);
    assert_eq!(Checker::with_budget(10).check(&history), Verdict::Unknown { key: b"k0".to_vec(), explored: 10 });
    assert_eq!(Checker::default().check(&history), Verdict::Linearizable);
}
