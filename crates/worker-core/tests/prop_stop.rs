//! Property tests of stop-string matching (`StopMatcher`), the CI-sized version of the
//! `stop_strings` fuzz target in `fuzz/`: for any stop strings and any split of any text into
//! pieces, what was emitted plus what is held back is exactly the input so far, a match ends the
//! stream at the earliest stop occurrence visible at that point, and a stop string is never emitted.

use proptest::prelude::*;
use worker_core::engine::StopMatcher;

/// Few distinct characters (ASCII and multi-byte), so stop strings actually occur.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('b'),
            Just('\n'),
            Just('é'),
            Just('日'),
            Just('😀')
        ],
        0..max,
    )
    .prop_map(|c| c.into_iter().collect())
}

/// The matcher's contract, written the slow obvious way: after piece k, the text seen so far is
/// the concatenation of pieces 0..=k; the first k at which it contains a stop string ends the
/// stream, at the leftmost occurrence (the first listed stop on a tie), with the text before it.
fn reference(stops: &[String], pieces: &[String]) -> (String, Option<String>) {
    let stops: Vec<&String> = stops.iter().filter(|s| !s.is_empty()).collect();
    let mut seen = String::new();
    for p in pieces {
        seen.push_str(p);
        let mut best: Option<(usize, &String)> = None;
        for s in &stops {
            if let Some(i) = seen.find(s.as_str())
                && best.is_none_or(|(b, _)| i < b)
            {
                best = Some((i, s));
            }
        }
        if let Some((i, s)) = best {
            return (seen[..i].to_owned(), Some(s.to_string()));
        }
    }
    (seen, None)
}

fn check(stops: &[String], pieces: &[String]) -> Result<(), TestCaseError> {
    let mut m = StopMatcher::new(stops);
    let max_stop = stops.iter().map(String::len).max().unwrap_or(0);
    let mut emitted = String::new();
    let mut seen = String::new();
    let mut matched = None;
    for p in pieces {
        seen.push_str(p);
        let out = m.push(p);
        emitted.push_str(&out.emit);
        if out.matched.is_some() {
            matched = out.matched;
            break;
        }
        // Emitted + held back == the input so far, and what is held is shorter than a stop.
        let held = m.clone().flush();
        prop_assert_eq!(format!("{emitted}{held}"), seen.clone());
        prop_assert!(held.len() < max_stop.max(1), "held {:?}", held);
        for s in stops.iter().filter(|s| !s.is_empty()) {
            prop_assert!(!emitted.contains(s.as_str()), "emitted a stop {:?}", s);
        }
    }
    if matched.is_none() {
        emitted.push_str(&m.flush());
    }
    let (want_text, want_stop) = reference(stops, pieces);
    prop_assert_eq!(emitted, want_text);
    prop_assert_eq!(matched, want_stop);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn emitted_plus_held_is_the_input_and_matches_are_earliest(
        stops in proptest::collection::vec(text(4), 0..5),
        pieces in proptest::collection::vec(text(6), 0..12),
    ) {
        check(&stops, &pieces)?;
    }

    /// Arbitrary Unicode pieces (mostly no match: exercises char-boundary handling of the
    /// held-back suffix against any stop).
    #[test]
    fn arbitrary_unicode_never_panics_and_round_trips(
        stops in proptest::collection::vec(".{0,4}", 0..5),
        pieces in proptest::collection::vec(".{0,8}", 0..10),
    ) {
        check(&stops, &pieces)?;
    }
}

#[test]
fn a_stop_split_over_many_pieces_is_found() {
    let stops = vec!["日😀é".to_string()];
    let pieces: Vec<String> = ["x日", "😀", "é", "y"].map(String::from).to_vec();
    check(&stops, &pieces).unwrap();
    assert_eq!(reference(&stops, &pieces).0, "x");
}
