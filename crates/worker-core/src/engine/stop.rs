//! Stop strings matched on decoded text across token boundaries.
//!
//! Text that could still be the start of a stop string is held back; once it cannot, it is
//! released. A matched stop string and everything after it are never emitted.

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What one piece of text produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text safe to emit now.
    pub emit: String,
    /// The stop string that matched, if any (generation must end).
    pub matched: Option<String>,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, piece: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome {
                emit: piece.to_owned(),
                matched: None,
            };
        }
        self.held.push_str(piece);
        // The earliest complete match wins.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i);
        if let Some((i, s)) = first {
            let emit = self.held[..i].to_owned();
            let matched = Some(s.clone());
            self.held.clear();
            return StopOutcome { emit, matched };
        }
        // Hold back the longest suffix of `held` that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_owned();
        self.held.drain(..cut);
        StopOutcome {
            emit,
            matched: None,
        }
    }

    /// Releases held text at the end of generation (no stop string matched).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`, on char boundaries.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = text.len().min(stop.len().saturating_sub(1));
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut m = StopMatcher::new(&stops.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.emit);
            if o.matched.is_some() {
                return (out, o.matched);
            }
        }
        out.push_str(&m.flush());
        (out, None)
    }

    #[test]
    fn match_across_tokens_is_not_emitted() {
        assert_eq!(
            run(&["\n\n"], &["Hello", "\n", "\nWorld"]),
            ("Hello".into(), Some("\n\n".into()))
        );
    }

    #[test]
    fn partial_prefix_is_released_when_it_fails() {
        assert_eq!(run(&["STOP"], &["a S", "TO", "x"]), ("a STOx".into(), None));
    }

    #[test]
    fn held_text_is_flushed_at_end() {
        assert_eq!(run(&["STOP"], &["a ST"]), ("a ST".into(), None));
    }

    #[test]
    fn earliest_match_wins() {
        assert_eq!(
            run(&["bc", "ab"], &["xabc"]),
            ("x".into(), Some("ab".into()))
        );
    }

    #[test]
    fn multibyte_text() {
        assert_eq!(
            run(&["é!"], &["café", "!"]),
            ("caf".into(), Some("é!".into()))
        );
        assert_eq!(
            run(&["日本"], &["今日は日", "曜"]),
            ("今日は日曜".into(), None)
        );
    }

    #[test]
    fn no_stops_passes_through() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), None));
    }
}
