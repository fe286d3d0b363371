//! The GPU: driver probe, context and stream, VRAM accounting and host<->device copies.

use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr, DriverError, ValidAsZeroBits,
};
use std::sync::Arc;

/// Environment variable capping the VRAM the backend may use, in bytes (tests force a small
/// budget with it). Suffixes K, M, G (binary) are accepted.
pub const VRAM_BUDGET_ENV: &str = "WORKER_ORCD_VRAM_BUDGET";

/// Whether the CUDA driver library (libcuda) can be loaded at all. Never panics.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether cuBLAS (libcublas) can be loaded. Never panics.
pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// Number of visible CUDA devices; an error when there is no driver or no GPU. Never panics.
pub fn device_count() -> Result<usize, String> {
    if !driver_present() {
        return Err("the CUDA driver (libcuda.so) is not installed".into());
    }
    match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) => Ok(n.max(0) as usize),
        Ok(Err(e)) => Err(format!("cuDeviceGetCount failed: {e}")),
        Err(_) => Err("the CUDA driver could not be initialized".into()),
    }
}

/// Why there is no usable GPU, or None when device `ordinal` exists (tests skip on Some).
pub fn unavailable_reason(ordinal: usize) -> Option<String> {
    match device_count() {
        Err(e) => Some(e),
        Ok(n) if n <= ordinal => Some(format!("no CUDA device {ordinal} ({n} visible)")),
        Ok(_) => None,
    }
}

/// Parses a byte count such as `1073741824`, `512M` or `8G`.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// The budget from [`VRAM_BUDGET_ENV`], if set and valid.
pub fn budget_from_env() -> Option<u64> {
    std::env::var(VRAM_BUDGET_ENV)
        .ok()
        .and_then(|v| parse_bytes(&v))
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// One device's context and the backend's single stream.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub ordinal: usize,
    pub name: String,
}

impl Gpu {
    /// Opens device `ordinal`. Buffers created afterwards do not record cudarc events: all work
    /// is ordered on the one stream (see `kernels`).
    pub fn open(ordinal: usize) -> Result<Gpu, String> {
        if let Some(why) = unavailable_reason(ordinal) {
            return Err(why);
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| format!("creating a context on cuda:{ordinal}: {e}"))?;
        // SAFETY: nothing has been allocated in this context by us yet; the backend uses one
        // stream, so stream order alone keeps every use of a buffer before its free.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("creating a stream: {e}"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        Ok(Gpu {
            ctx,
            stream,
            ordinal,
            name,
        })
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(u64, u64), DriverError> {
        let (f, t) = self.ctx.mem_get_info()?;
        Ok((f as u64, t as u64))
    }

    /// Makes this device's context current on the calling thread (the engine thread may differ
    /// from the one that created the backend).
    pub fn bind(&self) -> Result<(), DriverError> {
        self.ctx.bind_to_thread()
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>, DriverError> {
        self.stream.clone_htod(host)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, DriverError> {
        self.stream.alloc_zeros(n.max(1))
    }

    /// Copies device data to a new host vector, after all work queued before it (explicit and
    /// synchronous: for results, tests and checkpoint logging, never a host view of VRAM).
    pub fn download<T: DeviceRepr>(&self, src: &impl DevicePtr<T>) -> Result<Vec<T>, DriverError> {
        let v = self.stream.clone_dtoh(src)?;
        self.stream.synchronize()?;
        Ok(v)
    }

    pub fn sync(&self) -> Result<(), DriverError> {
        self.stream.synchronize()
    }
}

/// Page-locked host memory of `len` plain values (i32, f32), for async copies that need no
/// staging by the driver and no wait on the stream (the decode graph's inputs and its token).
/// Plain `cuMemHostAlloc` memory (not write-combined: the host reads it back too).
pub struct Pinned<T: Copy + Default> {
    ptr: *mut T,
    len: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: the allocation is owned by this value alone (no aliasing handles exist); the engine
// moves the backend between threads but uses it from one at a time.
unsafe impl<T: Copy + Default + Send> Send for Pinned<T> {}

impl<T: Copy + Default> Pinned<T> {
    pub fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Self, DriverError> {
        let len = len.max(1);
        ctx.bind_to_thread()?;
        // SAFETY: a plain host allocation of len * size_of::<T>() bytes; initialized below.
        let ptr = unsafe { cudarc::driver::result::malloc_host(len * std::mem::size_of::<T>(), 0)? }
            as *mut T;
        assert!(!ptr.is_null() && ptr.is_aligned());
        for i in 0..len {
            // SAFETY: in bounds of the fresh allocation.
            unsafe { ptr.add(i).write(T::default()) };
        }
        Ok(Pinned {
            ptr,
            len,
            ctx: ctx.clone(),
        })
    }

    /// The host view. The caller must not write while an async copy from it may be in flight
    /// (the decode graph synchronizes before it restages).
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: `len` initialized values owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl<T: Copy + Default> Drop for Pinned<T> {
    fn drop(&mut self) {
        let _ = self.ctx.bind_to_thread();
        // SAFETY: allocated by cuMemHostAlloc in `new`, freed once.
        let _ = unsafe { cudarc::driver::result::free_host(self.ptr as *mut std::ffi::c_void) };
    }
}

/// Whether a driver error is an out-of-memory condition.
pub fn is_oom(e: &DriverError) -> bool {
    e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_byte_counts() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("512M"), Some(512 << 20));
        assert_eq!(parse_bytes("2g"), Some(2 << 30));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
