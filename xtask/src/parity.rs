//! `cargo xtask parity OURS.jsonl REFERENCE.jsonl`: compares two orch-log checkpoint logs.
//!
//! How lines are paired:
//! 1. Each file is split into requests. A new request starts where `team` changes, where
//!    `token_idx` goes down, or where a (checkpoint, token_idx, pos) repeats within the current one.
//! 2. Requests are paired by name (the part of `team` after the first `/`: `reference/haiku` and
//!    `worker-orcd/haiku` are both `haiku`) when every request on both sides has a name and at least
//!    one name is shared; otherwise by order (the first request of ours with the first of the
//!    reference, …).
//! 3. Within a request pair, lines are paired by (token_idx, checkpoint). Where ours has several
//!    (prefill positions are logged with token_idx 0), the one at the reference's `pos` is used.
//!    A different `pos` or `input_token` is a divergence (the two runs were fed different tokens),
//!    reported as such, not as a numeric failure; later tokens of that request are not compared.
//!
//! Each pair gets a score: the largest of |ours − ref| / max(1, |ref|) over the common prefix of
//! `values`, over the stats (min, max, mean, l2, which cover all values) and over the values of
//! token ids in both `top` lists. So it is an absolute error for values near or below 1 and a
//! relative one above. Bands: exact < 1e-5 ≤ close < 1e-3 ≤ acceptable < 1e-1 ≤ warning < 1 ≤ fail.
//! NaN/inf where the reference is finite, or a different shape, is a fail; a different argmax of
//! the logits is at least a warning. The exit status is non-zero when any checkpoint fails or when
//! nothing could be compared.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use orch_log::{LogLine, Stage, Stats};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Our checkpoint log (JSONL written by orch-log).
    pub ours: PathBuf,
    /// The reference log, e.g. ../shared/golden/parity_hf.jsonl.
    pub reference: PathBuf,
    /// How many of the top logits to compare for the overlap column.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Print only checkpoints at warning or worse (the summary is always printed).
    #[arg(long)]
    pub only_bad: bool,
    /// Exit non-zero when any checkpoint is at this band or worse. The default, `fail`, suits a
    /// comparison with llama.cpp (8-bit activations: warnings are expected); against HF float32
    /// an f32 backend should pass `--fail-at warning` or stricter.
    #[arg(long, value_enum, default_value_t = Band::Fail)]
    pub fail_at: Band,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ours = read_jsonl(&args.ours)?;
    let reference = read_jsonl(&args.reference)?;
    let report = compare(&ours, &reference, args.top_k);
    let mut text = format!(
        "ours:      {} ({} lines)\nreference: {} ({} lines)\n",
        args.ours.display(),
        ours.len(),
        args.reference.display(),
        reference.len()
    )
    .into_bytes();
    report.render(&mut text, args.only_bad)?;
    // A closed pipe (`| head`) is the reader's choice, not an error; the exit status still tells.
    match io::stdout().lock().write_all(&text) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(if report.failed_at(args.fail_at) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Reads one `LogLine` per non-empty line; errors name the file and line number.
pub fn read_jsonl(path: &Path) -> anyhow::Result<Vec<LogLine>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut lines = Vec::new();
    for (i, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: LogLine = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not an orch-log line", path.display(), i + 1))?;
        lines.push(parsed);
    }
    Ok(lines)
}

/// Agreement bands, best first; the derived order lets `max` pick the worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Band {
    Exact,
    Close,
    Acceptable,
    Warning,
    Fail,
}

impl Band {
    /// NaN (an undefined score) counts as a fail.
    pub fn of(score: f64) -> Band {
        match score {
            s if s < 1e-5 => Band::Exact,
            s if s < 1e-3 => Band::Close,
            s if s < 1e-1 => Band::Acceptable,
            s if s < 1.0 => Band::Warning,
            _ => Band::Fail,
        }
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Band::Exact => "exact",
            Band::Close => "close",
            Band::Acceptable => "acceptable",
            Band::Warning => "WARNING",
            Band::Fail => "FAIL",
        })
    }
}

/// One compared checkpoint.
#[derive(Debug, Clone)]
pub struct Row {
    /// Display name of the request pair.
    pub request: String,
    pub token_idx: u32,
    pub pos: Option<u32>,
    pub checkpoint: String,
    pub stage: Option<Stage>,
    /// How many leading values both lines hold (and were compared).
    pub common: usize,
    pub max_abs: f64,
    pub mean_abs: f64,
    /// l2 of the difference over l2 of the reference, over the common values.
    pub rel: f64,
    /// `stats.l2` of ours minus that of the reference (covers all values).
    pub dl2: Option<f64>,
    /// `stats.argmax` of (ours, reference).
    pub argmax: Option<(u64, u64)>,
    /// Shared ids among the first k of both `top` lists, and k.
    pub top_overlap: Option<(usize, usize)>,
    pub score: f64,
    pub band: Band,
    /// Why the band is worse than the score alone says, if it is.
    pub notes: Vec<String>,
}

/// Where the two runs stopped being fed the same tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    pub request: String,
    pub token_idx: u32,
    pub checkpoint: String,
    /// (ours, reference) input token.
    pub input_token: (Option<u32>, Option<u32>),
    /// (ours, reference) position.
    pub pos: (Option<u32>, Option<u32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    ByName,
    ByOrder,
}

/// The result of [`compare`].
#[derive(Debug)]
pub struct Report {
    pub matching: Matching,
    pub rows: Vec<Row>,
    pub divergences: Vec<Divergence>,
    /// Reference lines with no counterpart in ours (not a failure: ours may log fewer layers or
    /// stop earlier).
    pub missing_in_ours: usize,
    /// Reference lines after a divergence, not compared.
    pub skipped_after_divergence: usize,
    /// Lines of ours no reference line asked for (e.g. layers a logits-only reference lacks).
    pub extra_in_ours: usize,
    pub unmatched_ours: Vec<String>,
    pub unmatched_reference: Vec<String>,
    pub top_k: usize,
}

/// A run of lines of one request.
#[derive(Debug)]
struct Request<'a> {
    team: &'a str,
    name: Option<&'a str>,
    lines: Vec<&'a LogLine>,
}

/// Splits a log into requests (see the module docs for the rule).
fn split_requests(lines: &[LogLine]) -> Vec<Request<'_>> {
    let mut requests: Vec<Request<'_>> = Vec::new();
    let mut seen: std::collections::HashSet<(&str, u32, Option<u32>)> = Default::default();
    for line in lines {
        let key = (line.checkpoint.as_str(), line.token_idx, line.pos);
        let starts_new = match requests.last() {
            None => true,
            Some(cur) => {
                let prev = cur.lines.last().map_or(0, |l| l.token_idx);
                cur.team != line.team || line.token_idx < prev || seen.contains(&key)
            }
        };
        if starts_new {
            seen.clear();
            requests.push(Request {
                team: &line.team,
                name: line.request_name(),
                lines: Vec::new(),
            });
        }
        seen.insert(key);
        if let Some(cur) = requests.last_mut() {
            cur.lines.push(line);
        }
    }
    requests
}

/// Pairs the requests of both sides: (index in ours, index in reference).
fn pair_requests(
    ours: &[Request<'_>],
    reference: &[Request<'_>],
) -> (Matching, Vec<(usize, usize)>) {
    let all_named = |rs: &[Request<'_>]| !rs.is_empty() && rs.iter().all(|r| r.name.is_some());
    let shared = ours.iter().any(|o| {
        reference
            .iter()
            .any(|r| r.name.is_some() && r.name == o.name)
    });
    if all_named(ours) && all_named(reference) && shared {
        let mut used = vec![false; ours.len()];
        let mut pairs = Vec::new();
        for (ri, r) in reference.iter().enumerate() {
            let found = ours
                .iter()
                .enumerate()
                .position(|(oi, o)| !used[oi] && o.name == r.name);
            if let Some(oi) = found {
                used[oi] = true;
                pairs.push((oi, ri));
            }
        }
        (Matching::ByName, pairs)
    } else {
        let n = ours.len().min(reference.len());
        (Matching::ByOrder, (0..n).map(|i| (i, i)).collect())
    }
}

fn request_label(r: &Request<'_>, index: usize) -> String {
    match r.name {
        Some(name) => name.to_owned(),
        None => format!("#{index} ({})", r.team),
    }
}

/// Compares `ours` against `reference`; `top_k` sets the overlap column.
pub fn compare(ours: &[LogLine], reference: &[LogLine], top_k: usize) -> Report {
    let our_reqs = split_requests(ours);
    let ref_reqs = split_requests(reference);
    let (matching, pairs) = pair_requests(&our_reqs, &ref_reqs);
    let mut report = Report {
        matching,
        rows: Vec::new(),
        divergences: Vec::new(),
        missing_in_ours: 0,
        skipped_after_divergence: 0,
        extra_in_ours: 0,
        unmatched_ours: Vec::new(),
        unmatched_reference: Vec::new(),
        top_k,
    };
    for (oi, o) in our_reqs.iter().enumerate() {
        if !pairs.iter().any(|&(p, _)| p == oi) {
            report.unmatched_ours.push(request_label(o, oi));
            report.extra_in_ours += o.lines.len();
        }
    }
    for (ri, r) in ref_reqs.iter().enumerate() {
        if !pairs.iter().any(|&(_, p)| p == ri) {
            report.unmatched_reference.push(request_label(r, ri));
            report.missing_in_ours += r.lines.len();
        }
    }
    for &(oi, ri) in &pairs {
        compare_request(
            &our_reqs[oi],
            &ref_reqs[ri],
            &request_label(&ref_reqs[ri], ri),
            &mut report,
        );
    }
    report
}

fn compare_request(ours: &Request<'_>, reference: &Request<'_>, label: &str, report: &mut Report) {
    let mut index: HashMap<(u32, &str), Vec<&LogLine>> = HashMap::new();
    for line in &ours.lines {
        index
            .entry((line.token_idx, line.checkpoint.as_str()))
            .or_default()
            .push(line);
    }
    let mut used = 0usize;
    let mut diverged_at: Option<u32> = None;
    for r in &reference.lines {
        if diverged_at.is_some_and(|t| r.token_idx >= t) {
            report.skipped_after_divergence += 1;
            continue;
        }
        let Some(candidates) = index.get(&(r.token_idx, r.checkpoint.as_str())) else {
            report.missing_in_ours += 1;
            continue;
        };
        let Some(o) = candidates
            .iter()
            .find(|o| o.pos == r.pos)
            .or(candidates.last())
        else {
            report.missing_in_ours += 1;
            continue;
        };
        used += 1;
        let differs = |a: Option<u32>, b: Option<u32>| a.is_some() && b.is_some() && a != b;
        if differs(o.pos, r.pos) || differs(o.input_token, r.input_token) {
            report.divergences.push(Divergence {
                request: label.to_owned(),
                token_idx: r.token_idx,
                checkpoint: r.checkpoint.clone(),
                input_token: (o.input_token, r.input_token),
                pos: (o.pos, r.pos),
            });
            diverged_at = Some(r.token_idx);
            report.skipped_after_divergence += 1;
            continue;
        }
        report.rows.push(compare_lines(o, r, label, report.top_k));
    }
    report.extra_in_ours += ours.lines.len().saturating_sub(used);
}

/// |d| relative to the reference value where that exceeds 1, absolute below.
fn scaled(ours: f64, reference: f64) -> f64 {
    (ours - reference).abs() / reference.abs().max(1.0)
}

fn compare_lines(o: &LogLine, r: &LogLine, request: &str, top_k: usize) -> Row {
    let mut notes = Vec::new();
    let mut score = 0.0f64;
    let mut floor = Band::Exact;
    if o.shape != r.shape {
        notes.push(format!("shape {} vs {}", o.shape, r.shape));
        floor = Band::Fail;
    }

    // Values: only the leading values both lines carry.
    let common = o.values.len().min(r.values.len());
    let (mut max_abs, mut sum_abs, mut diff_sq, mut ref_sq, mut n) =
        (0.0f64, 0.0, 0.0, 0.0, 0usize);
    let mut nonfinite_mismatch = 0usize;
    for (a, b) in o.values[..common].iter().zip(&r.values[..common]) {
        match (a, b) {
            (Some(a), Some(b)) => {
                let d = (a - b).abs();
                max_abs = max_abs.max(d);
                sum_abs += d;
                diff_sq += d * d;
                ref_sq += b * b;
                n += 1;
                score = score.max(scaled(*a, *b));
            }
            (None, None) => {}
            _ => nonfinite_mismatch += 1,
        }
    }
    if nonfinite_mismatch > 0 {
        notes.push(format!(
            "{nonfinite_mismatch} value(s) non-finite on one side only"
        ));
        floor = Band::Fail;
    }
    let mean_abs = if n > 0 { sum_abs / n as f64 } else { 0.0 };
    let rel = if ref_sq > 0.0 {
        (diff_sq / ref_sq).sqrt()
    } else if diff_sq > 0.0 {
        f64::INFINITY
    } else {
        0.0
    };

    // Stats: they cover every value, not only the logged prefix.
    let (os, rs) = (
        o.stats.clone().unwrap_or_default(),
        r.stats.clone().unwrap_or_default(),
    );
    for (a, b) in [
        (os.min, rs.min),
        (os.max, rs.max),
        (os.mean, rs.mean),
        (os.l2, rs.l2),
    ] {
        if let (Some(a), Some(b)) = (a, b) {
            score = score.max(scaled(a, b));
        }
    }
    let bad = |s: &Stats| s.nan.unwrap_or(0) + s.inf.unwrap_or(0);
    if bad(&os) > bad(&rs) {
        notes.push(format!(
            "{} NaN/inf in ours, {} in reference",
            bad(&os),
            bad(&rs)
        ));
        floor = Band::Fail;
    }
    let dl2 = os.l2.zip(rs.l2).map(|(a, b)| a - b);
    let argmax = os.argmax.zip(rs.argmax);
    let stage = r.stage();
    // Near-ties can legitimately flip, so a different top token is a warning, not a fail.
    if let Some((a, b)) = argmax.filter(|(a, b)| a != b && stage == Some(Stage::Logits)) {
        notes.push(format!("argmax {a} vs {b}"));
        floor = floor.max(Band::Warning);
    }

    // Top-k: overlap of the first k ids, and the values of every id both lists hold.
    let top_overlap = o.top.as_ref().zip(r.top.as_ref()).map(|(ot, rt)| {
        for (id, v) in ot {
            if let Some((_, rv)) = rt.iter().find(|(rid, _)| rid == id) {
                score = score.max(scaled(*v, *rv));
            }
        }
        let k = top_k.min(ot.len()).min(rt.len());
        let shared = ot[..k]
            .iter()
            .filter(|(id, _)| rt[..k].iter().any(|(rid, _)| rid == id))
            .count();
        (shared, k)
    });

    let band = Band::of(score).max(floor);
    Row {
        request: request.to_owned(),
        token_idx: r.token_idx,
        pos: r.pos,
        checkpoint: r.checkpoint.clone(),
        stage,
        common,
        max_abs,
        mean_abs,
        rel,
        dl2,
        argmax,
        top_overlap,
        score,
        band,
        notes,
    }
}

impl Report {
    /// True when any checkpoint is at `band` or worse, or when nothing at all could be compared.
    pub fn failed_at(&self, band: Band) -> bool {
        self.rows.is_empty() || self.rows.iter().any(|r| r.band >= band)
    }

    /// Forward order: earliest token first, then embedding, layer.0 … layer.N, final_norm, logits
    /// (unknown checkpoint names last), then request order.
    fn forward_key(row: &Row) -> (u32, bool, Option<Stage>) {
        (row.token_idx, row.stage.is_none(), row.stage)
    }

    /// The first checkpoint at warning or worse, over all requests.
    pub fn first_bad(&self) -> Option<&Row> {
        self.rows
            .iter()
            .filter(|r| r.band >= Band::Warning)
            .min_by_key(|r| Self::forward_key(r))
    }

    /// The first checkpoint at warning or worse of one request.
    pub fn first_bad_in(&self, request: &str) -> Option<&Row> {
        self.rows
            .iter()
            .filter(|r| r.request == request && r.band >= Band::Warning)
            .min_by_key(|r| Self::forward_key(r))
    }

    pub fn count(&self, band: Band) -> usize {
        self.rows.iter().filter(|r| r.band == band).count()
    }

    pub fn render(&self, w: &mut impl Write, only_bad: bool) -> io::Result<()> {
        let how = match self.matching {
            Matching::ByName => "by name (the part of `team` after '/')",
            Matching::ByOrder => "by order (names absent or not shared)",
        };
        writeln!(w, "requests matched {how}")?;
        let prefix = self.rows.iter().map(|r| r.common).max().unwrap_or(0);
        writeln!(
            w,
            "values compared over the common prefix (up to {prefix} per line); stats (min, max, mean, l2, argmax) cover all values"
        )?;
        writeln!(
            w,
            "score = max |ours-ref|/max(1,|ref|) over values, stats and shared top ids; exact <1e-5 <= close <1e-3 <= acceptable <1e-1 <= warning <1 <= FAIL\n"
        )?;
        let mut current: Option<&str> = None;
        for row in &self.rows {
            if only_bad && row.band < Band::Warning {
                continue;
            }
            if current != Some(row.request.as_str()) {
                current = Some(&row.request);
                writeln!(w, "== request {} ==", row.request)?;
                writeln!(
                    w,
                    "{:>4} {:>5}  {:<11} {:<10} {:>9} {:>9} {:>9} {:>9} {:>10}  {:<15} top{}",
                    "tok",
                    "pos",
                    "checkpoint",
                    "band",
                    "score",
                    "max|d|",
                    "mean|d|",
                    "rel",
                    "dl2",
                    "argmax",
                    self.top_k
                )?;
            }
            writeln!(w, "{}", format_row(row))?;
        }
        writeln!(w)?;
        self.render_summary(w)
    }

    fn render_summary(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(
            w,
            "compared {} checkpoints: exact {}, close {}, acceptable {}, warning {}, FAIL {}",
            self.rows.len(),
            self.count(Band::Exact),
            self.count(Band::Close),
            self.count(Band::Acceptable),
            self.count(Band::Warning),
            self.count(Band::Fail)
        )?;
        if self.missing_in_ours > 0 {
            writeln!(
                w,
                "{} reference lines have no counterpart in ours",
                self.missing_in_ours
            )?;
        }
        if self.extra_in_ours > 0 {
            writeln!(
                w,
                "{} lines of ours have no reference counterpart (ignored)",
                self.extra_in_ours
            )?;
        }
        for name in &self.unmatched_reference {
            writeln!(w, "reference request {name} has no match in ours")?;
        }
        for name in &self.unmatched_ours {
            writeln!(w, "our request {name} has no match in the reference")?;
        }
        for d in &self.divergences {
            let show = |v: Option<u32>| v.map_or("-".to_owned(), |v| v.to_string());
            writeln!(
                w,
                "DIVERGENCE request {} token_idx {}: input token {} (ours) vs {} (reference), pos {} vs {}; this and later tokens of the request not compared",
                d.request,
                d.token_idx,
                show(d.input_token.0),
                show(d.input_token.1),
                show(d.pos.0),
                show(d.pos.1),
            )?;
        }
        if self.skipped_after_divergence > 0 {
            writeln!(
                w,
                "{} reference lines skipped after divergences",
                self.skipped_after_divergence
            )?;
        }
        let mut seen = Vec::new();
        for row in &self.rows {
            if seen.contains(&row.request.as_str()) {
                continue;
            }
            seen.push(row.request.as_str());
            if let Some(bad) = self.first_bad_in(&row.request) {
                writeln!(
                    w,
                    "request {}: first warning-or-worse at token_idx {} {} ({})",
                    bad.request, bad.token_idx, bad.checkpoint, bad.band
                )?;
            }
        }
        match self.first_bad() {
            Some(bad) => writeln!(
                w,
                "FIRST BAD CHECKPOINT: {} at token_idx {} (request {}, {}, score {:.3e})",
                bad.checkpoint, bad.token_idx, bad.request, bad.band, bad.score
            )?,
            None if self.rows.is_empty() => writeln!(w, "FAIL: nothing could be compared")?,
            None => writeln!(w, "no checkpoint at warning or worse")?,
        }
        Ok(())
    }
}

fn format_row(row: &Row) -> String {
    let argmax = match row.argmax {
        None => "-".to_owned(),
        Some((a, b)) if a == b => format!("= {a}"),
        Some((a, b)) => format!("{a}!={b}"),
    };
    let top = row
        .top_overlap
        .map_or("-".to_owned(), |(s, k)| format!("{s}/{k}"));
    let dl2 = row.dl2.map_or("-".to_owned(), |d| format!("{d:+.2e}"));
    let pos = row.pos.map_or("-".to_owned(), |p| p.to_string());
    let mut line = format!(
        "{:>4} {:>5}  {:<11} {:<10} {:>9.2e} {:>9.2e} {:>9.2e} {:>9.2e} {:>10}  {:<15} {}",
        row.token_idx,
        pos,
        row.checkpoint,
        row.band,
        row.score,
        row.max_abs,
        row.mean_abs,
        row.rel,
        dl2,
        argmax,
        top
    );
    if !row.notes.is_empty() {
        line.push_str("  ");
        line.push_str(&row.notes.join("; "));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    const HF: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/golden/parity_hf.jsonl"
    );
    const LLAMACPP: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/golden/parity_llamacpp.jsonl"
    );

    fn golden(path: &str) -> Vec<LogLine> {
        read_jsonl(Path::new(path)).unwrap_or_else(|e| panic!("golden file {path}: {e:#}"))
    }

    fn rendered(report: &Report) -> String {
        let mut out = Vec::new();
        report.render(&mut out, false).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn reference_against_itself_is_exact() {
        let hf = golden(HF);
        assert_eq!(hf.len(), 1080, "10 prompts x 4 tokens x 27 checkpoints");
        let report = compare(&hf, &hf, 5);
        assert_eq!(report.matching, Matching::ByName);
        assert_eq!(report.rows.len(), 1080);
        assert_eq!(report.count(Band::Exact), 1080);
        assert!(report.divergences.is_empty());
        assert_eq!((report.missing_in_ours, report.extra_in_ours), (0, 0));
        assert!(report.first_bad().is_none());
        assert!(!report.failed_at(Band::Fail));
        let logits = report
            .rows
            .iter()
            .find(|r| r.checkpoint == "logits")
            .unwrap();
        assert_eq!(logits.top_overlap, Some((5, 5)));
        assert_eq!(logits.common, 64);
        assert!(rendered(&report).contains("no checkpoint at warning or worse"));
    }

    /// A bug that corrupts the residual stream from layer 5 on is pinned to layer.5 at the first
    /// token, although every later checkpoint of every prompt is wrong too.
    #[test]
    fn perturbed_layers_pinpoint_layer_5() {
        let hf = golden(HF);
        let mut ours = hf.clone();
        for line in &mut ours {
            if matches!(line.stage(), Some(Stage::Layer(n)) if n >= 5) {
                for v in line.values.iter_mut().flatten() {
                    *v += 2.0;
                }
            }
            // Ours is named by the worker's team, as the engine would write it.
            line.team = line.team.replace("reference/", "worker-orcd/");
        }
        let report = compare(&ours, &hf, 5);
        assert_eq!(report.matching, Matching::ByName);
        let first = report.first_bad().unwrap();
        assert_eq!((first.checkpoint.as_str(), first.token_idx), ("layer.5", 0));
        assert_eq!(first.band, Band::Fail);
        assert!((first.max_abs - 2.0).abs() < 1e-9);
        assert_eq!(
            report.count(Band::Fail),
            10 * 4 * 19,
            "layers 5..=23 of every line"
        );
        assert!(report.failed_at(Band::Fail));
        let text = rendered(&report);
        assert!(
            text.contains("FIRST BAD CHECKPOINT: layer.5 at token_idx 0"),
            "{text}"
        );
        let layer4 = report
            .rows
            .iter()
            .find(|r| r.checkpoint == "layer.4")
            .unwrap();
        assert_eq!(layer4.band, Band::Exact);
    }

    #[test]
    fn different_input_token_is_a_divergence_not_a_failure() {
        let hf = golden(HF);
        let mut ours = hf.clone();
        for line in &mut ours {
            if line.team == "reference/fib" && line.token_idx == 2 {
                line.input_token = Some(line.input_token.unwrap() + 1);
                // Everything computed from another token differs too.
                for v in line.values.iter_mut().flatten() {
                    *v += 5.0;
                }
            }
        }
        let report = compare(&ours, &hf, 5);
        assert_eq!(report.divergences.len(), 1);
        let d = &report.divergences[0];
        assert_eq!((d.request.as_str(), d.token_idx), ("fib", 2));
        assert_ne!(d.input_token.0, d.input_token.1);
        // Tokens 2 and 3 of fib (27 lines each) are not compared; nothing fails.
        assert_eq!(report.skipped_after_divergence, 54);
        assert_eq!(report.rows.len(), 1080 - 54);
        assert!(!report.failed_at(Band::Fail));
        assert!(rendered(&report).contains("DIVERGENCE request fib token_idx 2"));
    }

    #[test]
    fn unnamed_requests_match_by_order() {
        let hf = golden(HF);
        let mut ours = hf.clone();
        for line in &mut ours {
            line.team = "worker-orcd".into();
        }
        let report = compare(&ours, &hf, 5);
        assert_eq!(report.matching, Matching::ByOrder);
        assert_eq!(report.count(Band::Exact), 1080);
        // Order matters: with the first two requests swapped, their tokens no longer match.
        let split = split_requests(&ours);
        assert_eq!(
            split.len(),
            10,
            "token_idx going back to 0 starts a new request"
        );
        let mut swapped: Vec<LogLine> = split[1].lines.iter().map(|l| (*l).clone()).collect();
        swapped.extend(split[0].lines.iter().map(|l| (*l).clone()));
        swapped.extend(
            split[2..]
                .iter()
                .flat_map(|r| r.lines.iter().map(|l| (*l).clone())),
        );
        let report = compare(&swapped, &hf, 5);
        assert_eq!(report.divergences.len(), 2);
        assert!(report.divergences.iter().all(|d| d.token_idx == 0));
    }

    #[test]
    fn repeated_identical_requests_split_apart() {
        let hf = golden(HF);
        let one: Vec<LogLine> = hf
            .iter()
            .filter(|l| l.token_idx == 0)
            .take(27)
            .cloned()
            .collect();
        let mut twice = one.clone();
        twice.extend(one);
        for l in &mut twice {
            l.team = "worker-orcd".into();
        }
        assert_eq!(split_requests(&twice).len(), 2);
    }

    /// HF float32 against llama.cpp's logits: matched by name, logits only, and the bands of two
    /// independent implementations (the README gives differences up to ~0.3 in logits).
    #[test]
    fn hf_against_llamacpp_logits() {
        let hf = golden(HF);
        let lc = golden(LLAMACPP);
        assert_eq!(lc.len(), 270);
        let report = compare(&hf, &lc, 5);
        assert_eq!(report.matching, Matching::ByName);
        assert!(report.rows.iter().all(|r| r.checkpoint == "logits"));
        assert!(report.rows.len() + report.skipped_after_divergence >= 10);
        assert!(
            report
                .rows
                .iter()
                .all(|r| r.band > Band::Close && r.band < Band::Fail),
            "independent implementations are neither identical nor failing"
        );
        assert!(!report.failed_at(Band::Fail));
        assert!(
            report.failed_at(Band::Warning),
            "--fail-at warning is too strict here"
        );
    }

    /// Scaling the residual stream by 1.5 from layer 5 on (values and stats): a relative error of
    /// 0.5 is a warning by the bands, named as the first bad checkpoint, and fails under
    /// `--fail-at warning`.
    #[test]
    fn scaled_residual_is_a_warning_at_layer_5() {
        let hf = golden(HF);
        let mut ours = hf.clone();
        for line in &mut ours {
            let after_5 = match line.stage() {
                Some(Stage::Layer(n)) => n >= 5,
                Some(Stage::FinalNorm | Stage::Logits) => true,
                _ => false,
            };
            if after_5 {
                for v in line.values.iter_mut().flatten() {
                    *v *= 1.5;
                }
                if let Some(s) = line.stats.as_mut() {
                    for x in [&mut s.min, &mut s.max, &mut s.mean, &mut s.l2] {
                        *x = x.map(|x| x * 1.5);
                    }
                }
            }
        }
        let report = compare(&ours, &hf, 5);
        let first = report.first_bad().unwrap();
        assert_eq!(
            (first.checkpoint.as_str(), first.band),
            ("layer.5", Band::Warning)
        );
        assert!((first.rel - 0.5).abs() < 1e-6, "{}", first.rel);
        assert!(!report.failed_at(Band::Fail));
        assert!(report.failed_at(Band::Warning));
    }

    #[test]
    fn nan_where_reference_is_finite_fails() {
        let hf = golden(HF);
        let mut ours = hf.clone();
        ours[3].values[0] = None;
        if let Some(s) = ours[3].stats.as_mut() {
            s.nan = Some(1);
        }
        let report = compare(&ours, &hf, 5);
        let first = report.first_bad().unwrap();
        assert_eq!(
            (first.checkpoint.as_str(), first.band),
            (hf[3].checkpoint.as_str(), Band::Fail)
        );
        assert!(first.notes.iter().any(|n| n.contains("non-finite")));
        assert!(report.failed_at(Band::Fail));
    }

    #[test]
    fn nothing_to_compare_fails() {
        let hf = golden(HF);
        let report = compare(&[], &hf, 5);
        assert!(report.rows.is_empty() && report.failed_at(Band::Fail));
        assert_eq!(report.missing_in_ours, 1080);
    }

    #[test]
    fn bands() {
        assert_eq!(Band::of(0.0), Band::Exact);
        assert_eq!(Band::of(9.9e-6), Band::Exact);
        assert_eq!(Band::of(1e-5), Band::Close);
        assert_eq!(Band::of(5e-2), Band::Acceptable);
        assert_eq!(Band::of(0.5), Band::Warning);
        assert_eq!(Band::of(1.0), Band::Fail);
        assert_eq!(Band::of(f64::NAN), Band::Fail);
        assert_eq!(Band::of(f64::INFINITY), Band::Fail);
    }
}
