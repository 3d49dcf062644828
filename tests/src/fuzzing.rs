//! Bounded, structure-aware fuzzing for the parsers that read untrusted input (request bodies,
//! upstream stream events): the time-boxed driver every fuzz test runs through, and the input
//! generators they share (arbitrary JSON, realistic seeds mutated at random places, raw bytes).
//!
//! Built on `proptest` rather than cargo-fuzz: cargo-fuzz needs a nightly toolchain, which CI
//! cannot install (it reaches crates.io, not rustup's servers). proptest runs on stable inside
//! `cargo test`, and on failure shrinks the input to a minimal one and prints it.
//!
//! Each fuzz test runs for `TOLLGATE_FUZZ_SECS` seconds (default 2; `scripts/test.sh` sets more)
//! in batches of cases, and prints how many inputs it executed.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseResult, TestError, TestRunner};
use serde_json::{Map, Value};

/// Inputs per batch: each batch is a fresh runner with its own random seed.
const BATCH: u32 = 256;

/// How long each fuzz test runs.
pub fn budget() -> Duration {
    let secs = std::env::var("TOLLGATE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs)
}

/// Runs `property` on inputs from `strategy` until the budget is spent (at least one batch).
/// A failing input is shrunk to a minimal one, and the test panics naming it. Returns the number
/// of inputs executed, which it also prints.
pub fn fuzz<S>(name: &str, strategy: S, property: impl Fn(S::Value) -> TestCaseResult) -> u64
where
    S: Strategy,
    S::Value: std::fmt::Debug,
{
    let budget = budget();
    let started = Instant::now();
    let mut executed = 0u64;
    loop {
        let mut runner = TestRunner::new(Config {
            cases: BATCH,
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        });
        match runner.run(&strategy, &property) {
            Ok(()) => executed += u64::from(BATCH),
            Err(TestError::Fail(reason, input)) => {
                panic!("fuzz {name}: {reason}\nminimal failing input: {input:#?}")
            }
            Err(TestError::Abort(reason)) => panic!("fuzz {name}: aborted: {reason}"),
        }
        if started.elapsed() >= budget {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {executed} inputs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    executed
}

/// Strings a parser finds hard: empty, unicode, control characters, NUL, long runs, and tags.
pub fn awkward_string() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        4 => ".{0,24}",
        1 => Just(String::new()),
        1 => Just("\u{0}".to_owned()),
        1 => Just("\u{feff}é漢字😀\u{202e}".to_owned()),
        1 => Just("<think>".to_owned()),
        1 => Just("</think>".to_owned()),
        1 => (1usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Numbers at the edges: zero, negatives, huge integers, fractions, exponents.
pub fn awkward_number() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e300f64..1e300).prop_map(Value::from),
        Just(Value::from(0)),
        Just(Value::from(-1)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(0.5)),
    ]
}

/// Any JSON value, up to a few levels deep; object keys drawn from `keys` (the names the parser
/// under test looks for) as well as arbitrary ones.
pub fn json(keys: &'static [&'static str]) -> impl Strategy<Value = Value> + Clone {
    let key = prop_oneof![
        3 => prop::sample::select(keys).prop_map(str::to_owned),
        1 => awkward_string(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        awkward_number(),
        awkward_string().prop_map(Value::String),
        prop::sample::select(keys).prop_map(|k| Value::String(k.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a JSON document, at the node `at` (counted in document order, modulo the
/// number of nodes).
#[derive(Debug, Clone)]
pub enum Mutation {
    /// The node becomes another value.
    Replace { at: usize, with: Value },
    /// The node, if it is an object, loses one of its keys.
    RemoveKey { at: usize, nth: usize },
    /// The node, if it is an object, gains (or overwrites) a key.
    SetKey { at: usize, key: String, with: Value },
    /// The node, if it is an array, repeats one of its elements many times.
    Repeat { at: usize, nth: usize, times: usize },
}

/// A realistic document from `seeds`, changed in a few random places: most inputs get past the
/// first type check, so the fuzzer reaches the code behind it.
pub fn mutated(
    seeds: Vec<Value>,
    keys: &'static [&'static str],
) -> impl Strategy<Value = Value> + Clone {
    let mutation = prop_oneof![
        3 => (any::<usize>(), json(keys)).prop_map(|(at, with)| Mutation::Replace { at, with }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(at, nth)| Mutation::RemoveKey { at, nth }),
        3 => (any::<usize>(), prop::sample::select(keys), json(keys)).prop_map(|(at, key, with)| {
            Mutation::SetKey { at, key: key.to_owned(), with }
        }),
        1 => (any::<usize>(), any::<usize>(), 2usize..300)
            .prop_map(|(at, nth, times)| Mutation::Repeat { at, nth, times }),
    ];
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation, 0..4),
    )
        .prop_map(|(mut doc, mutations)| {
            for m in &mutations {
                apply(&mut doc, m);
            }
            doc
        })
}

/// Bytes that are almost a document: a seed's JSON text cut short, or with a byte changed.
pub fn mangled_bytes(seeds: Vec<Value>) -> impl Strategy<Value = Vec<u8>> {
    let texts: Vec<Vec<u8>> = seeds.iter().map(|s| s.to_string().into_bytes()).collect();
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (prop::sample::select(texts.clone()), any::<usize>()).prop_map(|(mut t, cut)| {
            t.truncate(cut % (t.len() + 1));
            t
        }),
        (
            prop::sample::select(texts),
            prop::collection::vec((any::<usize>(), any::<u8>()), 1..4)
        )
            .prop_map(|(mut t, edits)| {
                for (at, byte) in edits {
                    if !t.is_empty() {
                        let at = at % t.len();
                        t[at] = byte;
                    }
                }
                t
            }),
    ]
}

fn apply(doc: &mut Value, mutation: &Mutation) {
    let at = match mutation {
        Mutation::Replace { at, .. }
        | Mutation::RemoveKey { at, .. }
        | Mutation::SetKey { at, .. }
        | Mutation::Repeat { at, .. } => *at % count(doc),
    };
    let Some(node) = nth_node(doc, &mut { at }) else {
        return;
    };
    match mutation {
        Mutation::Replace { with, .. } => *node = with.clone(),
        Mutation::RemoveKey { nth, .. } => {
            if let Value::Object(map) = node
                && !map.is_empty()
            {
                let key = map.keys().nth(nth % map.len()).cloned().unwrap_or_default();
                map.shift_remove(&key);
            }
        }
        Mutation::SetKey { key, with, .. } => {
            if let Value::Object(map) = node {
                map.insert(key.clone(), with.clone());
            }
        }
        Mutation::Repeat { nth, times, .. } => {
            if let Value::Array(items) = node
                && !items.is_empty()
            {
                let item = items[nth % items.len()].clone();
                items.extend(std::iter::repeat_n(item, *times));
            }
        }
    }
}

fn count(value: &Value) -> usize {
    1 + match value {
        Value::Array(items) => items.iter().map(count).sum(),
        Value::Object(map) => map.values().map(count).sum(),
        _ => 0,
    }
}

/// The node at position `left` in document order (pre-order).
fn nth_node<'v>(value: &'v mut Value, left: &mut usize) -> Option<&'v mut Value> {
    if *left == 0 {
        return Some(value);
    }
    *left -= 1;
    match value {
        Value::Array(items) => items.iter_mut().find_map(|v| nth_node(v, left)),
        Value::Object(map) => map.values_mut().find_map(|v| nth_node(v, left)),
        _ => None,
    }
}

/// Splits `text` into consecutive pieces at the given (arbitrary) cut points, moved back to
/// character boundaries: the same text as a stream would deliver it in fragments.
pub fn fragments(text: &str, cuts: &[usize]) -> Vec<String> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|c| {
            let mut at = c % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            at
        })
        .collect();
    points.push(0);
    points.push(text.len());
    points.sort_unstable();
    points.dedup();
    points
        .windows(2)
        .map(|w| text[w[0]..w[1]].to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nodes_are_counted_and_found_in_document_order() {
        let mut doc = json!({"a": [1, {"b": 2}], "c": 3});
        assert_eq!(count(&doc), 6);
        assert_eq!(nth_node(&mut doc, &mut 4).cloned(), Some(json!(2)));
        apply(
            &mut doc,
            &Mutation::Replace {
                at: 5,
                with: json!(null),
            },
        );
        assert_eq!(doc, json!({"a": [1, {"b": 2}], "c": null}));
    }

    #[test]
    fn fragments_rejoin_into_the_text() {
        let text = "é<think>漢</think>x";
        let parts = fragments(text, &[1, 3, 7, 100]);
        assert!(parts.len() > 2);
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn a_failing_property_is_reported_with_its_input() {
        let result = std::panic::catch_unwind(|| {
            fuzz("always fails on big numbers", any::<u8>(), |n| {
                prop_assert!(n < 200);
                Ok(())
            })
        });
        let message = result
            .expect_err("the property fails for some input")
            .downcast::<String>()
            .map(|m| *m)
            .unwrap_or_default();
        assert!(message.contains("minimal failing input: 200"), "{message}");
    }
}
