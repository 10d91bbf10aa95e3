// What every checkpoint reader (safetensors, PyTorch .pt) offers the model: names, shapes and
// tensors decoded to f32 on demand.
import { CheckpointError } from './checkpoint-error.ts';
import type { DType } from './dtype.ts';

export interface TensorInfo {
  dtype: DType;
  shape: number[];
}

export interface TensorSource {
  /** The file (or description) for error messages. */
  readonly name: string;
  readonly metadata: Record<string, string>;
  keys(): string[];
  info(key: string): TensorInfo | undefined;
  /** The tensor's values as f32 (integers converted exactly where they fit). */
  read(key: string): Promise<Float32Array>;
  close(): Promise<void>;
}

/** A view of `source` restricted to keys starting with `prefix`, with the prefix removed. */
export function withPrefix(source: TensorSource, prefix: string): TensorSource {
  const keys = source.keys().filter((k) => k.startsWith(prefix)).map((k) => k.slice(prefix.length));
  return {
    name: `${source.name} [${prefix}*]`,
    metadata: source.metadata,
    keys: () => keys,
    info: (k) => source.info(prefix + k),
    read: (k) => source.read(prefix + k),
    close: () => source.close(),
  };
}

/** Index of the first NaN or ±Infinity in `data`, or -1 when every value is finite. */
export function firstNonFinite(data: ArrayLike<number>): number {
  for (let i = 0; i < data.length; i++) if (!Number.isFinite(data[i])) return i;
  return -1;
}

/**
 * The tensor's values, refusing NaN and ±Infinity: weights and optimizer state are always finite,
 * so one that is not means a corrupt (or diverged) checkpoint, which must not load silently.
 */
export async function readFinite(source: TensorSource, key: string): Promise<Float32Array> {
  const data = await source.read(key);
  const i = firstNonFinite(data);
  if (i < 0) return data;
  // A float64 beyond float32's range (|v| > 3.4e38) reads as ±Infinity: it may be finite there.
  const wide = source.info(key)?.dtype === 'F64' && !Number.isNaN(data[i]);
  const found = wide ? `${data[i]} as float32 (its float64 value is infinite or beyond float32's range, ±3.4e38)` : `${data[i]}`;
  throw new CheckpointError(source.name, `tensor "${key}" holds ${found} at index ${i}: the checkpoint is corrupt, or not of a model that computes in float32`);
}
