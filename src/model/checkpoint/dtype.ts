// Decoding checkpoint element types to the engine's f32.

export type DType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'U8' | 'I8' | 'BOOL';

export const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, U8: 1, I8: 1, BOOL: 1 };

/** IEEE half → single, exact (every f16 is representable in f32). */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * A 64-bit integer as the nearest f32 (ties to even), as PyTorch's .float() gives it. Number(v)
 * rounds to a double first: past 2⁵³ that double can sit exactly on an f32 tie that v itself is not
 * on, and the tie then goes the wrong way (2⁶⁰ + 2³⁶ + 1 read as 2⁶⁰, not 2⁶⁰ + 2³⁷).
 */
export function int64ToFloat32(v: bigint): number {
  const magnitude = v < 0n ? -v : v;
  if (magnitude <= 2n ** 53n) return Math.fround(Number(v));
  // 24 significant bits q, the rest r below them; round half to even.
  const shift = BigInt(magnitude.toString(2).length - 24);
  let q = magnitude >> shift;
  const r = magnitude - (q << shift);
  const half = 1n << (shift - 1n);
  if (r > half || (r === half && (q & 1n) === 1n)) q += 1n;
  const rounded = Number(q) * 2 ** Number(shift); // q ≤ 2²⁴: exact
  return Math.fround(v < 0n ? -rounded : rounded);
}

/**
 * Little-endian raw bytes of `dtype` → Float32Array. Aligned F32 bytes are viewed, not copied (the
 * caller owns `bytes`); everything else is converted into a new array.
 */
export function toFloat32(dtype: DType, bytes: Uint8Array, count: number): Float32Array {
  if (dtype === 'F32' && bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, count);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out = new Float32Array(count);
  switch (dtype) {
    case 'F32':
      new Uint8Array(out.buffer).set(bytes.subarray(0, count * 4));
      break;
    case 'F16':
      for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
      break;
    case 'BF16': {
      // bfloat16 is the high half of a float32: write its bits into the top of each f32 of `out`.
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = view.getUint16(2 * i, true) << 16;
      break;
    }
    case 'F64':
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(8 * i, true);
      break;
    case 'I64':
      for (let i = 0; i < count; i++) out[i] = int64ToFloat32(view.getBigInt64(8 * i, true));
      break;
    case 'I32':
      for (let i = 0; i < count; i++) out[i] = view.getInt32(4 * i, true);
      break;
    case 'U8':
    case 'BOOL':
      for (let i = 0; i < count; i++) out[i] = bytes[i];
      break;
    case 'I8':
      for (let i = 0; i < count; i++) out[i] = view.getInt8(i);
      break;
  }
  return out;
}

/** A copy of `bytes` with each `size`-byte element's bytes reversed (big-endian ↔ little-endian). */
export function byteSwapped(bytes: Uint8Array, size: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i += size) for (let j = 0; j < size; j++) out[i + j] = bytes[i + size - 1 - j];
  return out;
}
