// Naming the variant directly does not help either: it holds `&[f32]`, not a device buffer.
use orch_log::HostSlice;

#[allow(dead_code)]
struct DeviceBuffer<T> {
    ptr: u64,
    len: usize,
    _marker: std::marker::PhantomData<T>,
}

fn main() {
    let dev: DeviceBuffer<f32> = DeviceBuffer { ptr: 0x7f00_0000_0000, len: 896, _marker: std::marker::PhantomData };
    let _ = HostSlice::F32(&dev);
}
