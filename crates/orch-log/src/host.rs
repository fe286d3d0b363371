//! The only way data enters the sink: borrowed slices of host memory.
//!
//! The seed bug of this project was checkpoint logging that dereferenced a device pointer from CPU
//! code. `HostSlice` closes that door by type: its variants hold `&[T]` for a fixed set of element
//! types, and the `From` impls below cover exactly those slices (and `Vec`s of them). A device
//! buffer (cudarc's `CudaSlice<T>`, or any type that does not deref to a host slice) has no
//! conversion into it, so a backend must copy to the host (`memcpy_dtoh`) and pass the host copy.
//! `tests/compile_fail/` holds the proof.

use half::{bf16, f16};

/// A borrowed slice of host memory, tagged with its element type.
#[derive(Debug, Clone, Copy)]
pub enum HostSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    BF16(&'a [bf16]),
    I32(&'a [i32]),
}

impl HostSlice<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostSlice::F32(s) => s.len(),
            HostSlice::F16(s) => s.len(),
            HostSlice::BF16(s) => s.len(),
            HostSlice::I32(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `dtype` string written to the log line.
    pub fn dtype(&self) -> &'static str {
        match self {
            HostSlice::F32(_) => "f32",
            HostSlice::F16(_) => "f16",
            HostSlice::BF16(_) => "bf16",
            HostSlice::I32(_) => "i32",
        }
    }

    /// Element `i` widened to f64 (exact for every supported type).
    pub(crate) fn get_f64(&self, i: usize) -> Option<f64> {
        match self {
            HostSlice::F32(s) => s.get(i).map(|&v| f64::from(v)),
            HostSlice::F16(s) => s.get(i).map(|&v| f64::from(v)),
            HostSlice::BF16(s) => s.get(i).map(|&v| f64::from(v)),
            HostSlice::I32(s) => s.get(i).map(|&v| f64::from(v)),
        }
    }

    /// Visits every element widened to f64, without allocating.
    pub(crate) fn for_each_f64(&self, mut f: impl FnMut(usize, f64)) {
        match self {
            HostSlice::F32(s) => s.iter().enumerate().for_each(|(i, &v)| f(i, f64::from(v))),
            HostSlice::F16(s) => s.iter().enumerate().for_each(|(i, &v)| f(i, f64::from(v))),
            HostSlice::BF16(s) => s.iter().enumerate().for_each(|(i, &v)| f(i, f64::from(v))),
            HostSlice::I32(s) => s.iter().enumerate().for_each(|(i, &v)| f(i, f64::from(v))),
        }
    }

    /// Whether values of this type should be printed with the shortest f32 representation
    /// (f16/bf16/f32 all fit exactly in f32; i32 does not).
    pub(crate) fn is_float(&self) -> bool {
        !matches!(self, HostSlice::I32(_))
    }
}

macro_rules! host_from {
    ($t:ty, $variant:ident) => {
        impl<'a> From<&'a [$t]> for HostSlice<'a> {
            fn from(s: &'a [$t]) -> Self {
                HostSlice::$variant(s)
            }
        }
        impl<'a> From<&'a Vec<$t>> for HostSlice<'a> {
            fn from(s: &'a Vec<$t>) -> Self {
                HostSlice::$variant(s.as_slice())
            }
        }
        impl<'a, const N: usize> From<&'a [$t; N]> for HostSlice<'a> {
            fn from(s: &'a [$t; N]) -> Self {
                HostSlice::$variant(s.as_slice())
            }
        }
    };
}

host_from!(f32, F32);
host_from!(f16, F16);
host_from!(bf16, BF16);
host_from!(i32, I32);
