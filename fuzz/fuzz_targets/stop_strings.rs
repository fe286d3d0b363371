//! Stop-string matching (`StopMatcher`) on arbitrary stop strings and pieces: emitted text plus
//! held-back text always equals the input so far; a match ends the stream at the leftmost stop
//! occurrence in the text seen so far (the first listed stop on a tie) with exactly the text
//! before it; no stop string is ever emitted.
//!
//! Input: byte 0 bit 0 maps every character onto a 6-letter alphabet ("ab\né日😀") so matches
//! are frequent; the rest is split at 0x00 into segments: the first holds the stop strings
//! separated by 0x01, the others are the pieces (each lossy UTF-8).

#![no_main]

use libfuzzer_sys::fuzz_target;
use worker_core::engine::StopMatcher;

const ALPHABET: [char; 6] = ['a', 'b', '\n', 'é', '日', '😀'];

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

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = |b: &[u8]| -> String {
        let s = String::from_utf8_lossy(b);
        if mode & 1 != 0 {
            s.chars()
                .map(|c| ALPHABET[c as usize % ALPHABET.len()])
                .collect()
        } else {
            s.into_owned()
        }
    };
    let mut segments = rest.split(|&b| b == 0);
    let stops: Vec<String> = segments
        .next()
        .unwrap_or_default()
        .split(|&b| b == 1)
        .map(text)
        .take(8)
        .collect();
    let pieces: Vec<String> = segments.map(text).collect();

    let mut m = StopMatcher::new(&stops);
    let max_stop = stops.iter().map(String::len).max().unwrap_or(0);
    let (mut emitted, mut seen, mut matched) = (String::new(), String::new(), None);
    for p in &pieces {
        seen.push_str(p);
        let out = m.push(p);
        emitted.push_str(&out.emit);
        if out.matched.is_some() {
            matched = out.matched;
            break;
        }
        let held = m.clone().flush();
        assert_eq!(format!("{emitted}{held}"), seen);
        assert!(held.len() < max_stop.max(1));
    }
    if matched.is_none() {
        emitted.push_str(&m.flush());
    }
    for s in stops.iter().filter(|s| !s.is_empty()) {
        assert!(!emitted.contains(s.as_str()));
    }
    assert_eq!((emitted, matched), reference(&stops, &pieces));
});
