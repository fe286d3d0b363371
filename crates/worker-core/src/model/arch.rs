//! Per-architecture facts, as data. Adding a model family means adding one `ArchSpec` here
//! (and its tests); the forward pass reads these flags instead of branching on names.

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate (x[i], x[i + d/2]): qwen2 GGUF files ("NEOX" in ggml).
    Neox,
    /// Rotate (x[2i], x[2i+1]): llama GGUF files (the converter permuted Q/K for it).
    Adjacent,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArchSpec {
    /// `general.architecture` value, also the metadata key prefix.
    pub name: &'static str,
    pub rope_style: RopeStyle,
    /// Q, K and V projections carry biases.
    pub qkv_bias: bool,
    /// Default RoPE base when the file has no `<arch>.rope.freq_base`.
    pub default_rope_base: f32,
}

pub const QWEN2: ArchSpec = ArchSpec {
    name: "qwen2",
    rope_style: RopeStyle::Neox,
    qkv_bias: true,
    default_rope_base: 1_000_000.0,
};

pub const LLAMA: ArchSpec = ArchSpec {
    name: "llama",
    rope_style: RopeStyle::Adjacent,
    qkv_bias: false,
    default_rope_base: 10_000.0,
};

/// Every architecture this build can run.
pub const SUPPORTED: &[ArchSpec] = &[QWEN2, LLAMA];

pub fn lookup(name: &str) -> Option<&'static ArchSpec> {
    SUPPORTED.iter().find(|a| a.name == name)
}

pub fn supported_names() -> String {
    SUPPORTED
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}
