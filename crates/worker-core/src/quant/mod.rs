//! GGML block formats: type table, dequantization and CPU dot products.

mod types;

pub use types::{GgmlType, supported_type_list, unsupported_type_name};
