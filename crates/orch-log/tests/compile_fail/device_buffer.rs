// A stand-in for cudarc's `CudaSlice<T>`: it owns device memory and, like the real type, has no
// `Deref` to a host slice. Handing it to the sink must not compile.
use orch_log::{Checkpoint, HostSlice, Sink, SinkConfig, Stage};

#[allow(dead_code)]
struct DeviceBuffer<T> {
    ptr: u64,
    len: usize,
    _marker: std::marker::PhantomData<T>,
}

fn main() {
    let dev: DeviceBuffer<f32> = DeviceBuffer { ptr: 0x7f00_0000_0000, len: 896, _marker: std::marker::PhantomData };
    let mut sink = Sink::new("/dev/null", SinkConfig::default()).unwrap();
    let _ = sink.record(&Checkpoint {
        checkpoint: Stage::Logits,
        request: None,
        token_idx: 0,
        pos: 0,
        input_token: 0,
        shape: &[1, 896],
        data: HostSlice::from(&dev),
        source: "test",
        top_k: None,
    });
}
