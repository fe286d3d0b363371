//! Checkpoint logging shared by the backends: decides what to log and hands host slices to
//! orch-log. Backends call it with host data only (the CUDA backend copies to the host first,
//! and only when a sink is attached); with no sink every call is one branch.

use crate::engine::{BatchItem, TraceInfo};
use orch_log::{Checkpoint, HostSlice, Sink, Stage};

#[derive(Default)]
pub struct Tracer {
    sink: Option<Sink>,
    source: &'static str,
}

impl Tracer {
    pub fn new(sink: Option<Sink>, source: &'static str) -> Self {
        Tracer { sink, source }
    }

    pub fn enabled(&self) -> bool {
        self.sink.as_ref().is_some_and(Sink::is_enabled)
    }

    /// Whether `layer.N` is logged at all (so a backend can skip the copy).
    pub fn wants_layer(&self, layer: usize) -> bool {
        self.sink
            .as_ref()
            .is_some_and(|s| s.is_enabled() && s.wants_layer(layer as u32))
    }

    /// Logs the trailing rows of `data` ([rows, width]) for `item`: the chunk's last position,
    /// or every position of the chunk when the sink asks for prefill positions.
    pub fn record(
        &mut self,
        trace: Option<&TraceInfo>,
        stage: Stage,
        item: &BatchItem<'_>,
        data: &[f32],
        width: usize,
    ) {
        let (Some(sink), Some(trace)) = (self.sink.as_mut(), trace) else {
            return;
        };
        if !sink.is_enabled() || width == 0 {
            return;
        }
        let rows = data.len() / width;
        let t = item.tokens.len();
        let first = if sink.wants_prefill() {
            0
        } else {
            rows.saturating_sub(1)
        };
        for r in first..rows {
            // Row r of `rows` trailing rows is chunk token t - rows + r.
            let ti = t - rows + r;
            let result = sink.record(&Checkpoint {
                checkpoint: stage,
                request: trace.request.as_deref(),
                token_idx: if ti + 1 == t { trace.last_token_idx } else { 0 },
                pos: (item.start_pos + ti) as u32,
                input_token: item.tokens[ti],
                shape: &[1, width],
                data: HostSlice::F32(&data[r * width..(r + 1) * width]),
                source: self.source,
                top_k: (stage == Stage::Logits).then_some(orch_log::DEFAULT_TOP_K),
            });
            if let Err(e) = result {
                tracing::warn!("checkpoint logging stopped: {e}");
                return;
            }
        }
    }

    pub fn flush(&mut self) {
        if let Some(sink) = self.sink.as_mut()
            && let Err(e) = sink.flush()
        {
            tracing::warn!("checkpoint logging stopped: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LogitsWanted;

    /// Measures what a checkpoint costs with logging off (run with `--ignored --nocapture`);
    /// docs/ORCH-LOG.md records the figure.
    #[test]
    #[ignore]
    fn disabled_checkpoint_cost() {
        let mut tracer = Tracer::default();
        let data = vec![0.5f32; 896];
        let item = BatchItem {
            tokens: &[1],
            start_pos: 0,
            block_table: &[0],
            logits: LogitsWanted::Last,
            trace: None,
            cancel: None,
        };
        let n = 10_000_000u32;
        let t0 = std::time::Instant::now();
        for i in 0..n {
            let stage = Stage::Layer(i % 24);
            tracer.record(
                std::hint::black_box(None),
                stage,
                std::hint::black_box(&item),
                &data,
                896,
            );
            std::hint::black_box(tracer.wants_layer(i as usize % 24));
        }
        let ns = t0.elapsed().as_nanos() as f64 / n as f64;
        eprintln!(
            "disabled checkpoint (record + wants_layer): {ns:.2} ns; 27 per token = {:.0} ns/token",
            ns * 27.0
        );
    }
}
