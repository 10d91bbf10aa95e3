// One chunk file of a feature cache: a safetensors file holding, for images start..end−1, every
// t × b feature map (F32 [n, ...shape]), their labels and rows in the cache (I64 [n]), and in its
// metadata the extraction signature, start, end and a SHA-256 per tensor. Everything read back is
// checked against that: header shapes, index = start..end−1, labels, checksums, finiteness.
import { createHash } from 'node:crypto';
import { openSafetensors, writeSafetensors, type NamedArray } from '../model/checkpoint/safetensors.ts';
import { firstNonFinite, type TensorSource } from '../model/checkpoint/tensor-source.ts';
import { type CacheSignature, type ChunkPlan, parseCacheSignature, signatureDifferences } from './cache-signature.ts';
import { featureKey } from './feature-key.ts';

/**
 * Checksum of one tensor: SHA-256 (hex) of `<dtype> <shape as JSON>\n` followed by its values as
 * little-endian f32, i.e. what the reader returns (exact for the F32 features and for the small
 * integer labels and indices stored as I64). The shape is hashed too, so a header edit that keeps
 * the byte count is caught as well.
 */
export function tensorChecksum(dtype: string, shape: readonly number[], values: Float32Array): string {
  return createHash('sha256')
    .update(`${dtype} ${JSON.stringify(shape)}\n`)
    .update(new Uint8Array(values.buffer, values.byteOffset, values.byteLength))
    .digest('hex');
}

/** Writes one chunk atomically. `features`: featureKey → [n, ...shape] values. */
export async function writeFeatureChunk(path: string, sig: CacheSignature, chunk: ChunkPlan, features: Map<string, { shape: number[]; data: Float32Array }>, labels: readonly number[]): Promise<void> {
  const n = chunk.end - chunk.start;
  const tensors: Record<string, NamedArray> = {};
  const sums: Record<string, string> = {};
  for (const [key, f] of features) {
    tensors[key] = { shape: [n, ...f.shape], data: f.data };
    sums[key] = tensorChecksum('F32', tensors[key].shape, f.data);
  }
  const index = Array.from({ length: n }, (_, i) => chunk.start + i);
  for (const [name, values] of [['labels', labels], ['index', index]] as const) {
    tensors[name] = { shape: [n], data: BigInt64Array.from(values, (v) => BigInt(v)) };
    sums[name] = tensorChecksum('I64', [n], Float32Array.from(values));
  }
  await writeSafetensors(path, tensors, { signature: JSON.stringify(sig), start: String(chunk.start), end: String(chunk.end), sha256: JSON.stringify(sums) });
}

export interface FeatureChunk {
  file: string;
  signature: CacheSignature;
  labels: Int32Array;
  /** Per-image shape of each t × b feature map. */
  shapes: Map<string, number[]>;
  /** Values of one feature map, [n, ...shape], checked against the chunk's checksum. */
  read(key: string): Promise<Float32Array>;
  close(): Promise<void>;
}

function parseJsonObject(text: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(text);
    return v && typeof v === 'object' && !Array.isArray(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

const redo = (file: string) => `delete ${file} and rerun extract with the same settings to recompute it`;

/**
 * Opens and checks one chunk: its signature (against `expected` when given), that it is the chunk
 * `plan` says, its tensor set and shapes, and its labels and index against their checksums.
 */
export async function openFeatureChunk(file: string, plan: ChunkPlan, expected?: CacheSignature): Promise<FeatureChunk> {
  let s: TensorSource;
  try {
    s = await openSafetensors(file);
  } catch (e) {
    throw new Error(`feature chunk ${(e as Error).message}; ${redo(file)}`);
  }
  try {
    return await checkChunk(s, file, plan, expected);
  } catch (e) {
    await s.close();
    throw e;
  }
}

async function checkChunk(s: TensorSource, file: string, plan: ChunkPlan, expected?: CacheSignature): Promise<FeatureChunk> {
  const bad = (detail: string): never => {
    throw new Error(`${file}: ${detail}; ${redo(file)}`);
  };
  const sig = parseCacheSignature(s.metadata.signature, file);
  if (expected) {
    const diff = signatureDifferences(sig, expected);
    if (diff.length) throw new Error(`${file} comes from an extraction with other settings: ${diff.join(', ')}; use another --out directory or delete the old cache`);
  }
  if (s.metadata.start !== String(plan.start) || s.metadata.end !== String(plan.end)) {
    bad(`metadata says images ${s.metadata.start}..${s.metadata.end}, but this file holds ${plan.start}..${plan.end}`);
  }
  if (s.metadata.sha256 === undefined) bad('no checksums in its metadata (written by an older difrep?)');
  const sums = parseJsonObject(s.metadata.sha256) ?? bad('unreadable checksums in its metadata');
  const n = plan.end - plan.start;
  const keys = sig.timesteps.flatMap((t) => sig.blocks.map((b) => featureKey(t, b)));
  const want = new Set([...keys, 'labels', 'index']);
  const extra = s.keys().filter((k) => !want.has(k));
  if (extra.length) bad(`unexpected tensors ${extra.join(', ')}`);
  const shapes = new Map<string, number[]>();
  for (const k of want) {
    const info = s.info(k) ?? bad(`tensor "${k}" is missing`);
    const isFeature = k !== 'labels' && k !== 'index';
    const dtype = isFeature ? 'F32' : 'I64';
    if (info.dtype !== dtype) bad(`tensor "${k}" is ${info.dtype}, expected ${dtype}`);
    if (info.shape[0] !== n || (!isFeature && info.shape.length !== 1) || info.shape.some((d) => !Number.isInteger(d) || d < 1)) {
      bad(`tensor "${k}" has shape ${JSON.stringify(info.shape)}, expected [${n}${isFeature ? ', ...' : ''}] for ${n} images`);
    }
    if (typeof sums[k] !== 'string') bad(`no checksum for tensor "${k}"`);
    if (isFeature) shapes.set(k, info.shape.slice(1));
  }
  const readChecked = async (k: string): Promise<Float32Array> => {
    const info = s.info(k)!;
    const values = await s.read(k);
    if (tensorChecksum(info.dtype, info.shape, values) !== sums[k]) bad(`tensor "${k}" does not match its checksum (the file is corrupted)`);
    return values;
  };
  const index = await readChecked('index');
  const wrong = index.findIndex((v, i) => v !== plan.start + i);
  if (wrong >= 0) bad(`index[${wrong}] is ${index[wrong]}, expected ${plan.start + wrong}`);
  const labels = await readChecked('labels');
  const badLabel = labels.findIndex((v) => !Number.isInteger(v) || v < 0 || v > 2 ** 31 - 1);
  if (badLabel >= 0) bad(`label of image ${plan.start + badLabel} is ${labels[badLabel]}, not a class number ≥ 0`);
  return {
    file,
    signature: sig,
    labels: Int32Array.from(labels),
    shapes,
    async read(k) {
      if (!shapes.has(k)) throw new Error(`${file}: no feature map "${k}" (this cache has ${[...shapes.keys()].join(', ')})`);
      const values = await readChecked(k);
      const at = firstNonFinite(values);
      if (at >= 0) bad(`tensor "${k}" holds ${values[at]} at element ${at}`);
      return values;
    },
    close: () => s.close(),
  };
}
