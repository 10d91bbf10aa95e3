// Packs a kernel's uniform struct. Kernels declare their `Params` struct with the vec4 arrays
// (shapes and strides, up to 8 dims) first and 4-byte scalars after, so no padding rules apply.

export const MAX_RANK = 8;

export class Uniforms {
  private words: number[] = [];
  private types: ('u' | 'i' | 'f')[] = [];

  u32(...values: number[]): this {
    for (const v of values) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new RangeError(`uniform u32 out of range: ${v}`);
      this.words.push(v);
      this.types.push('u');
    }
    return this;
  }

  i32(...values: number[]): this {
    for (const v of values) {
      this.words.push(v);
      this.types.push('i');
    }
    return this;
  }

  f32(...values: number[]): this {
    for (const v of values) {
      this.words.push(v);
      this.types.push('f');
    }
    return this;
  }

  /** An `array<vec4<u32>, 2>`: up to 8 dims, padded with `fill`. Must start on a 16-byte boundary. */
  dims(values: readonly number[], fill = 0): this {
    if (values.length > MAX_RANK) throw new RangeError(`tensors of rank ${values.length} exceed the engine's maximum rank ${MAX_RANK}`);
    if (this.words.length % 4 !== 0) throw new Error('internal: dims() must start on a 16-byte boundary');
    const padded = [...values];
    while (padded.length < MAX_RANK) padded.push(fill);
    return this.u32(...padded);
  }

  toArrayBuffer(): ArrayBuffer {
    const n = Math.max(4, Math.ceil(this.words.length / 4) * 4);
    const buf = new ArrayBuffer(n * 4);
    const u = new Uint32Array(buf);
    const i = new Int32Array(buf);
    const f = new Float32Array(buf);
    this.words.forEach((w, k) => {
      if (this.types[k] === 'f') f[k] = w;
      else if (this.types[k] === 'i') i[k] = w;
      else u[k] = w;
    });
    return buf;
  }
}

/** Workgroup counts for `threads` invocations in groups of `size`, split over x and y (x ≤ 65535). */
export function grid1d(threads: number, size: number): [number, number] {
  const groups = Math.ceil(threads / size);
  if (groups <= 65535) return [groups, 1];
  const x = 65535;
  return [x, Math.ceil(groups / x)];
}

/**
 * How an elementwise kernel walks `size` values: as vec4s when they divide into them (`vec4`),
 * else one by one; `count` is the number of loads, for the uniforms and grid1d.
 */
export function elementLoads(size: number): { vec4: boolean; count: number } {
  const vec4 = size % 4 === 0;
  return { vec4, count: vec4 ? size / 4 : size };
}
