// GGUF quant block layouts on the device: per-element dequantization (dequantize, get_rows) and
// 32-element "chunks" unpacked to int8x4 words for dp4a dot products against q8_1 activations
// (matvec_q). Blocks are addressed as bytes, never as C structs: Q4_0, Q5_0, Q8_0 and Q6_K blocks
// are only 2-byte aligned, so every multi-byte field of those is read with 2-byte loads.
#pragma once

#include "common.cuh"

namespace wk {

// Geometry per type: elements and bytes per block, guaranteed alignment of each block's address
// (given an aligned tensor start) and whether the dp4a matvec path supports it.
template <int TYPE> struct QType;
template <> struct QType<WK_TYPE_F32> { static constexpr int BLK = 1, BYTES = 4, ALIGN = 4; };
template <> struct QType<WK_TYPE_F16> { static constexpr int BLK = 1, BYTES = 2, ALIGN = 2; };
template <> struct QType<WK_TYPE_BF16> { static constexpr int BLK = 1, BYTES = 2, ALIGN = 2; };
template <> struct QType<WK_TYPE_Q4_0> { static constexpr int BLK = 32, BYTES = 18, ALIGN = 2; };
template <> struct QType<WK_TYPE_Q4_1> { static constexpr int BLK = 32, BYTES = 20, ALIGN = 4; };
template <> struct QType<WK_TYPE_Q5_0> { static constexpr int BLK = 32, BYTES = 22, ALIGN = 2; };
template <> struct QType<WK_TYPE_Q5_1> { static constexpr int BLK = 32, BYTES = 24, ALIGN = 4; };
template <> struct QType<WK_TYPE_Q8_0> { static constexpr int BLK = 32, BYTES = 34, ALIGN = 2; };
template <> struct QType<WK_TYPE_Q4_K> { static constexpr int BLK = 256, BYTES = 144, ALIGN = 4; };
template <> struct QType<WK_TYPE_Q5_K> { static constexpr int BLK = 256, BYTES = 176, ALIGN = 4; };
template <> struct QType<WK_TYPE_Q6_K> { static constexpr int BLK = 256, BYTES = 210, ALIGN = 2; };

template <int TYPE> __host__ __device__ __forceinline__ size_t row_bytes(int K) {
    return (size_t)(K / QType<TYPE>::BLK) * QType<TYPE>::BYTES;
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block j (0..7) from the 12 packed scale bytes.
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t *s, int &sc, int &m) {
    if (j < 4) {
        sc = s[j] & 63;
        m = s[j + 4] & 63;
    } else {
        sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

// ---- per-element dequantization: element k (0 <= k < K) of a row starting at `row` ------------

template <int TYPE> __device__ float dequant_elem(const uint8_t *row, int k);

template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_F32>(const uint8_t *row, int k) {
    return ((const float *)row)[k];
}
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_F16>(const uint8_t *row, int k) {
    return f16_bits_to_float(((const uint16_t *)row)[k]);
}
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_BF16>(const uint8_t *row, int k) {
    return bf16_bits_to_float(((const uint16_t *)row)[k]);
}
// Q4_0: f16 d, qs[16]; element j < 16 is the low nibble of qs[j], j >= 16 the high nibble of qs[j-16].
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_Q4_0>(const uint8_t *row, int k) {
    const uint8_t *b = row + (size_t)(k / 32) * 18;
    const int j = k % 32;
    const uint8_t byte = b[2 + (j & 15)];
    const int q = j < 16 ? (byte & 15) : (byte >> 4);
    return load_f16(b) * (float)(q - 8);
}
// Q4_1: f16 d, f16 m, qs[16]; y = d*q + m.
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_Q4_1>(const uint8_t *row, int k) {
    const uint8_t *b = row + (size_t)(k / 32) * 20;
    const int j = k % 32;
    const uint8_t byte = b[4 + (j & 15)];
    const int q = j < 16 ? (byte & 15) : (byte >> 4);
    return load_f16(b) * (float)q + load_f16(b + 2);
}
// Q5_0: f16 d, u32 qh (2-aligned), qs[16]; element j takes bit j of qh as its 5th bit.
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_Q5_0>(const uint8_t *row, int k) {
    const uint8_t *b = row + (size_t)(k / 32) * 22;
    const int j = k % 32;
    const uint32_t qh = load_u32_a2(b + 2);
    const uint8_t byte = b[6 + (j & 15)];
    const int q = (j < 16 ? (byte & 15) : (byte >> 4)) | (int)(((qh >> j) & 1u) << 4);
    return load_f16(b) * (float)(q - 16);
}
// Q5_1: f16 d, f16 m, u32 qh, qs[16]; y = d*q + m.
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_Q5_1>(const uint8_t *row, int k) {
    const uint8_t *b = row + (size_t)(k / 32) * 24;
    const int j = k % 32;
    const uint32_t qh = load_u32_a4(b + 4);
    const uint8_t byte = b[8 + (j & 15)];
    const int q = (j < 16 ? (byte & 15) : (byte >> 4)) | (int)(((qh >> j) & 1u) << 4);
    return load_f16(b) * (float)q + load_f16(b + 2);
}
// Q8_0: f16 d, int8 qs[32].
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_Q8_0>(const uint8_t *row, int k) {
    const uint8_t *b = row + (size_t)(k / 32) * 34;
    return load_f16(b) * (float)(int8_t)b[2 + k % 32];
}
// Q4_K: f16 d, f16 dmin, scales[12], qs[128]; qs[32c..32c+32] hold sub-block 2c (low nibbles) and
// 2c+1 (high nibbles); y = d*sc*q - dmin*m (the min is subtracted).
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_Q4_K>(const uint8_t *row, int k) {
    const uint8_t *b = row + (size_t)(k / 256) * 144;
    const int e = k % 256, j = e / 32, l = e % 32;
    int sc, m;
    scale_min_k4(j, b + 4, sc, m);
    const uint8_t byte = b[16 + 32 * (j / 2) + l];
    const int q = (j & 1) ? (byte >> 4) : (byte & 15);
    const float d1 = load_f16(b) * (float)sc, m1 = load_f16(b + 2) * (float)m;
    return d1 * (float)q - m1;
}
// Q5_K: as Q4_K plus qh[32] at offset 16 (qs at 48); sub-block j takes bit j of qh[l] as bit 5.
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_Q5_K>(const uint8_t *row, int k) {
    const uint8_t *b = row + (size_t)(k / 256) * 176;
    const int e = k % 256, j = e / 32, l = e % 32;
    int sc, m;
    scale_min_k4(j, b + 4, sc, m);
    const uint8_t byte = b[48 + 32 * (j / 2) + l];
    const int q = ((j & 1) ? (byte >> 4) : (byte & 15)) | (((b[16 + l] >> j) & 1) << 4);
    const float d1 = load_f16(b) * (float)sc, m1 = load_f16(b + 2) * (float)m;
    return d1 * (float)q - m1;
}
// Q6_K: ql[128], qh[64], int8 scales[16], f16 d (offset 208). Element 128h + 32r + l (r = 0..3):
// low 4 bits from ql[64h + 32(r&1) + l] (nibble r>>1), high 2 bits from qh[32h + l] >> 2r,
// scale scales[8h + 2r + l/16]; y = d*scale*(q - 32).
template <> __device__ __forceinline__ float dequant_elem<WK_TYPE_Q6_K>(const uint8_t *row, int k) {
    const uint8_t *b = row + (size_t)(k / 256) * 210;
    const int e = k % 256, h = e / 128, r = (e % 128) / 32, l = e % 32;
    const uint8_t lo = b[64 * h + 32 * (r & 1) + l];
    const int q = ((r >> 1) ? (lo >> 4) : (lo & 15)) | (((b[128 + 32 * h + l] >> (2 * r)) & 3) << 4);
    const int sc = (int8_t)b[192 + 8 * h + 2 * r + l / 16];
    return load_f16(b + 208) * (float)sc * (float)(q - 32);
}

// ---- dp4a chunks: 32 consecutive weights (elements 32c .. 32c+31 of a row) ---------------------
//
// v[i] packs elements 4i..4i+3 as 4 bytes (the same order as a q8_1 block's qs), so
// sum_i dp4a(v[i], qs_word[i]) is the integer dot product of the chunk with the activation block.

// Bits 0..3 of x into bit 4 of bytes 0..3 (the 5th bit of four Q5 values).
__device__ __forceinline__ uint32_t spread4_to_bit4(uint32_t x) {
    return ((x & 1u) << 4) | ((x & 2u) << 11) | ((x & 4u) << 18) | ((x & 8u) << 25);
}

// Integer dot product of 8 int8x4 words with the 32 int8 values of a q8_1 block at `a`.
__device__ __forceinline__ int dot8(const int (&v)[8], const uint8_t *a) {
    const int *qa = (const int *)(a + 4);  // q8_1 blocks are 36 bytes: 4-byte aligned
    int s = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) s = __dp4a(v[i], qa[i], s);
    return s;
}

// (d, s) of a q8_1 block: scale and d * sum(qs).
__device__ __forceinline__ float2 q8_ds(const uint8_t *a) {
    return make_float2(load_f16(a), load_f16(a + 2));
}

template <int TYPE> struct Chunk;

// y = d*(q - 8): sum y*x = d*(da*sum(q*qa) - 8*sa).
template <> struct Chunk<WK_TYPE_Q4_0> {
    int v[8];
    float d;
    __device__ __forceinline__ void load(const uint8_t *row, int c) {
        const uint8_t *b = row + (size_t)c * 18;
        d = load_f16(b);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t w = load_u32_a2(b + 2 + 4 * i);
            v[i] = (int)(w & 0x0F0F0F0Fu);
            v[i + 4] = (int)((w >> 4) & 0x0F0F0F0Fu);
        }
    }
    __device__ __forceinline__ float dot(const uint8_t *a) const {
        const float2 ds = q8_ds(a);
        return d * (ds.x * (float)dot8(v, a) - 8.0f * ds.y);
    }
};

// y = d*q + m: sum y*x = d*da*sum(q*qa) + m*sa.
template <> struct Chunk<WK_TYPE_Q4_1> {
    int v[8];
    float d, m;
    __device__ __forceinline__ void load(const uint8_t *row, int c) {
        const uint8_t *b = row + (size_t)c * 20;
        d = load_f16(b);
        m = load_f16(b + 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t w = load_u32_a4(b + 4 + 4 * i);
            v[i] = (int)(w & 0x0F0F0F0Fu);
            v[i + 4] = (int)((w >> 4) & 0x0F0F0F0Fu);
        }
    }
    __device__ __forceinline__ float dot(const uint8_t *a) const {
        const float2 ds = q8_ds(a);
        return d * ds.x * (float)dot8(v, a) + m * ds.y;
    }
};

// y = d*(q - 16).
template <> struct Chunk<WK_TYPE_Q5_0> {
    int v[8];
    float d;
    __device__ __forceinline__ void load(const uint8_t *row, int c) {
        const uint8_t *b = row + (size_t)c * 22;
        d = load_f16(b);
        const uint32_t qh = load_u32_a2(b + 2);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t w = load_u32_a2(b + 6 + 4 * i);
            v[i] = (int)((w & 0x0F0F0F0Fu) | spread4_to_bit4(qh >> (4 * i)));
            v[i + 4] = (int)(((w >> 4) & 0x0F0F0F0Fu) | spread4_to_bit4(qh >> (16 + 4 * i)));
        }
    }
    __device__ __forceinline__ float dot(const uint8_t *a) const {
        const float2 ds = q8_ds(a);
        return d * (ds.x * (float)dot8(v, a) - 16.0f * ds.y);
    }
};

// y = d*q + m.
template <> struct Chunk<WK_TYPE_Q5_1> {
    int v[8];
    float d, m;
    __device__ __forceinline__ void load(const uint8_t *row, int c) {
        const uint8_t *b = row + (size_t)c * 24;
        d = load_f16(b);
        m = load_f16(b + 2);
        const uint32_t qh = load_u32_a4(b + 4);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t w = load_u32_a4(b + 8 + 4 * i);
            v[i] = (int)((w & 0x0F0F0F0Fu) | spread4_to_bit4(qh >> (4 * i)));
            v[i + 4] = (int)(((w >> 4) & 0x0F0F0F0Fu) | spread4_to_bit4(qh >> (16 + 4 * i)));
        }
    }
    __device__ __forceinline__ float dot(const uint8_t *a) const {
        const float2 ds = q8_ds(a);
        return d * ds.x * (float)dot8(v, a) + m * ds.y;
    }
};

// y = d*q, q signed.
template <> struct Chunk<WK_TYPE_Q8_0> {
    int v[8];
    float d;
    __device__ __forceinline__ void load(const uint8_t *row, int c) {
        const uint8_t *b = row + (size_t)c * 34;
        d = load_f16(b);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = (int)load_u32_a2(b + 2 + 4 * i);
    }
    __device__ __forceinline__ float dot(const uint8_t *a) const {
        return d * load_f16(a) * (float)dot8(v, a);
    }
};

// Sub-block j = c % 8 of super-block c / 8: y = (d*sc)*q - dmin*m.
template <> struct Chunk<WK_TYPE_Q4_K> {
    int v[8];
    float dsc, dm;
    __device__ __forceinline__ void load(const uint8_t *row, int c) {
        const uint8_t *b = row + (size_t)(c / 8) * 144;
        const int j = c % 8;
        int sc, m;
        scale_min_k4(j, b + 4, sc, m);
        dsc = load_f16(b) * (float)sc;
        dm = load_f16(b + 2) * (float)m;
        const uint8_t *qs = b + 16 + 32 * (j / 2);
        const int shift = 4 * (j & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = (int)((load_u32_a4(qs + 4 * i) >> shift) & 0x0F0F0F0Fu);
    }
    __device__ __forceinline__ float dot(const uint8_t *a) const {
        const float2 ds = q8_ds(a);
        return dsc * ds.x * (float)dot8(v, a) - dm * ds.y;
    }
};

template <> struct Chunk<WK_TYPE_Q5_K> {
    int v[8];
    float dsc, dm;
    __device__ __forceinline__ void load(const uint8_t *row, int c) {
        const uint8_t *b = row + (size_t)(c / 8) * 176;
        const int j = c % 8;
        int sc, m;
        scale_min_k4(j, b + 4, sc, m);
        dsc = load_f16(b) * (float)sc;
        dm = load_f16(b + 2) * (float)m;
        const uint8_t *qh = b + 16;
        const uint8_t *qs = b + 48 + 32 * (j / 2);
        const int shift = 4 * (j & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t lo = (load_u32_a4(qs + 4 * i) >> shift) & 0x0F0F0F0Fu;
            const uint32_t hi = ((load_u32_a4(qh + 4 * i) >> j) & 0x01010101u) << 4;
            v[i] = (int)(lo | hi);
        }
    }
    __device__ __forceinline__ float dot(const uint8_t *a) const {
        const float2 ds = q8_ds(a);
        return dsc * ds.x * (float)dot8(v, a) - dm * ds.y;
    }
};

// Quarter r of half h (chunk j = 4h + r of the super-block), values stored as q - 32 (signed);
// elements 0..15 use scale sc0, 16..31 sc1: y = d*sc*(q - 32).
template <> struct Chunk<WK_TYPE_Q6_K> {
    int v[8];
    float d;
    int sc0, sc1;
    __device__ __forceinline__ void load(const uint8_t *row, int c) {
        const uint8_t *b = row + (size_t)(c / 8) * 210;
        const int j = c % 8, h = j / 4, r = j % 4;
        const uint8_t *ql = b + 64 * h + 32 * (r & 1);
        const uint8_t *qh = b + 128 + 32 * h;
        const int lshift = 4 * (r >> 1), hshift = 2 * r;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const uint32_t lo = (load_u32_a2(ql + 4 * i) >> lshift) & 0x0F0F0F0Fu;
            const uint32_t hi = ((load_u32_a2(qh + 4 * i) >> hshift) & 0x03030303u) << 4;
            v[i] = (int)__vsub4(lo | hi, 0x20202020u);  // bytes 0..63 -> -32..31
        }
        sc0 = (int8_t)b[192 + 8 * h + 2 * r];
        sc1 = (int8_t)b[192 + 8 * h + 2 * r + 1];
        d = load_f16(b + 208);
    }
    __device__ __forceinline__ float dot(const uint8_t *a) const {
        const int *qa = (const int *)(a + 4);
        int s0 = 0, s1 = 0;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            s0 = __dp4a(v[i], qa[i], s0);
            s1 = __dp4a(v[i + 4], qa[i + 4], s1);
        }
        return d * load_f16(a) * (float)(sc0 * s0 + sc1 * s1);
    }
};

}  // namespace wk
