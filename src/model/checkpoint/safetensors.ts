// safetensors: u64 little-endian header length, a JSON header {name: {dtype, shape,
// data_offsets: [begin, end]}, __metadata__: {string: string}}, then the raw little-endian data.
// Reader (random access; the header is validated as the reference parser does) and atomic writer.
import { type ByteSource, openSource } from './byte-source.ts';
import { CheckpointError } from './checkpoint-error.ts';
import { toFloat32 } from './dtype.ts';
import { validateHeader } from './safetensors-header.ts';
import type { TensorSource } from './tensor-source.ts';

const MAX_HEADER = 100 * 1024 * 1024;

/** The format requires the JSON header to start with "{" (huggingface/safetensors: "MUST begin with a `{` character"). */
export function isSafetensors(head: Uint8Array): boolean {
  return head.length > 8 && head[8] === 0x7b;
}

export async function openSafetensors(input: string | Uint8Array | ByteSource): Promise<TensorSource> {
  const src = typeof input === 'string' || input instanceof Uint8Array ? await openSource(input) : input;
  try {
    return await readHeader(src);
  } catch (e) {
    await src.close();
    throw e;
  }
}

async function readHeader(src: ByteSource): Promise<TensorSource> {
  const fail = (detail: string): never => {
    throw new CheckpointError(src.name, detail);
  };
  if (src.size < 8) fail(`not a safetensors file: ${src.size} bytes, shorter than the 8-byte header length`);
  const lenBytes = await src.read(0, 8);
  const headerLen = Number(new DataView(lenBytes.buffer, lenBytes.byteOffset, 8).getBigUint64(0, true));
  if (headerLen > MAX_HEADER || 8 + headerLen > src.size) {
    fail(`not a safetensors file or truncated: header length ${headerLen} but the file has ${src.size} bytes`);
  }
  const headerBytes = await src.read(8, headerLen);
  let text = '';
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    fail('corrupted header: not valid UTF-8 text');
  }
  let header: unknown;
  try {
    header = JSON.parse(text);
  } catch (e) {
    return fail(`corrupted header (invalid JSON: ${(e as Error).message})`);
  }
  const dataStart = 8 + headerLen;
  const valid = validateHeader(header, dataStart, src.size);
  if (typeof valid === 'string') return fail(valid);
  const { metadata, entries } = valid;
  return {
    name: src.name,
    metadata,
    keys: () => [...entries.keys()],
    info: (k) => {
      const e = entries.get(k);
      return e && { dtype: e.dtype, shape: e.shape };
    },
    async read(k) {
      const e = entries.get(k);
      if (!e) return fail(`no tensor named "${k}"`);
      const count = e.shape.reduce((p, d) => p * d, 1);
      return toFloat32(e.dtype, await src.read(dataStart + e.begin, e.end - e.begin), count);
    },
    close: () => src.close(),
  };
}

export interface NamedArray {
  shape: number[];
  data: Float32Array | BigInt64Array;
}

/** The bytes of a safetensors file holding `tensors` (F32, or I64 for BigInt64Array). */
export function encodeSafetensors(tensors: Record<string, NamedArray>, metadata: Record<string, string> = {}): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  const names = Object.keys(tensors).sort();
  for (const name of names) {
    const t = tensors[name];
    if (name === '__metadata__') throw new RangeError('a tensor cannot be named "__metadata__": safetensors reserves that key for the metadata');
    const count = t.shape.reduce((p, d) => p * d, 1);
    if (count !== t.data.length) {
      throw new RangeError(`tensor "${name}": shape ${JSON.stringify(t.shape)} has ${count} elements but its data holds ${t.data.length}`);
    }
    const bytes = t.data.byteLength;
    header[name] = { dtype: t.data instanceof BigInt64Array ? 'I64' : 'F32', shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  const pad = (8 - (json.byteLength % 8)) % 8; // keep the data 8-byte aligned
  if (pad) json = new TextEncoder().encode(JSON.stringify(header) + ' '.repeat(pad));
  const out = new Uint8Array(8 + json.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  let at = 8 + json.byteLength;
  for (const name of names) {
    const d = tensors[name].data;
    out.set(new Uint8Array(d.buffer, d.byteOffset, d.byteLength), at);
    at += d.byteLength;
  }
  return out;
}

/** Writes a safetensors file atomically (temp file + rename): a reader never sees half a file. */
export async function writeSafetensors(path: string, tensors: Record<string, NamedArray>, metadata: Record<string, string> = {}): Promise<void> {
  const { writeFileAtomic } = await import('./atomic-write.ts');
  await writeFileAtomic(path, encodeSafetensors(tensors, metadata));
}
