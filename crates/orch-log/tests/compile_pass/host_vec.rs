// The same call with host memory compiles: a `Vec<f32>` by reference, and a slice of it.
use orch_log::{Checkpoint, HostSlice, Sink, SinkConfig, Stage};

fn main() {
    let host: Vec<f32> = vec![0.5; 896];
    let mut sink = Sink::new("/dev/null", SinkConfig::default()).unwrap();
    sink.record(&Checkpoint {
        checkpoint: Stage::Layer(0),
        request: None,
        token_idx: 0,
        pos: 0,
        input_token: 0,
        shape: &[1, 896],
        data: HostSlice::from(&host),
        source: "test",
        top_k: None,
    })
    .unwrap();
    let _ = HostSlice::F32(&host);
    let _ = HostSlice::from(&host[..10]);
    sink.flush().unwrap();
}
