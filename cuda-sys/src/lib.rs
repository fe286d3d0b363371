//! Raw bindings to the worker's CUDA kernels.
