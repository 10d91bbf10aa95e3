// Validation of a safetensors JSON header, with the rules of the format's reference parser
// (huggingface/safetensors, `Metadata::validate` and `SafeTensors::read_metadata`): a JSON object;
// every entry a known dtype, a shape of non-negative integers and data_offsets [begin, end] of
// non-negative integers with end − begin = dtype size × element count; sorted by offset, the
// entries tile the data section exactly — no overlap, no gap — and end exactly at the end of the
// file; `__metadata__` maps strings to strings.
import { DTYPE_BYTES, type DType } from './dtype.ts';
import type { TensorInfo } from './tensor-source.ts';

export interface HeaderEntry extends TensorInfo {
  /** Byte range in the data section (after the 8-byte length and the header). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  metadata: Record<string, string>;
  entries: Map<string, HeaderEntry>;
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const describe = (v: unknown): string => (v === undefined ? 'nothing' : Array.isArray(v) ? 'an array' : v === null ? 'null' : typeof v);

/**
 * The header's entries, or the first problem found (a sentence naming the tensor and the numbers).
 * The data section runs from byte `dataStart` (8 + header length) to the end of the file.
 */
export function validateHeader(header: unknown, dataStart: number, fileSize: number): SafetensorsHeader | string {
  const dataSize = fileSize - dataStart;
  if (!isObject(header)) return `corrupted header: the JSON is ${describe(header)}, not an object of tensors`;
  let metadata: Record<string, string> = {};
  const entries = new Map<string, HeaderEntry>();
  for (const [name, raw] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (raw === null) continue;
      if (!isObject(raw)) return `corrupted header: __metadata__ is ${describe(raw)}, not an object of strings`;
      const bad = Object.entries(raw).find(([, v]) => typeof v !== 'string');
      if (bad) return `corrupted header: __metadata__ "${bad[0]}" is ${describe(bad[1])}, not a string`;
      metadata = raw as Record<string, string>;
      continue;
    }
    const entry = validateEntry(name, raw);
    if (typeof entry === 'string') return entry;
    entries.set(name, entry);
  }
  const sorted = [...entries].sort(([, a], [, b]) => a.begin - b.begin || a.end - b.end);
  const truncated = sorted.find(([, e]) => e.end > dataSize);
  if (truncated) {
    return `truncated: tensor "${truncated[0]}" ends at byte ${dataStart + truncated[1].end} but the file has ${fileSize} bytes`;
  }
  // Entries in offset order must start where the previous one ended.
  let at = 0;
  let previous = '';
  for (const [name, e] of sorted) {
    if (e.begin < at) return `corrupted header: tensor "${name}" data_offsets [${e.begin},${e.end}] overlap tensor "${previous}", which ends at ${at}`;
    if (e.begin > at) {
      const after = previous ? `tensor "${previous}" ends at ${at}` : 'the data section starts at 0';
      return `corrupted header: tensor "${name}" starts at byte ${e.begin} but ${after}: no tensor holds data bytes ${at}..${e.begin}`;
    }
    at = e.end;
    previous = name;
  }
  if (at !== dataSize) return `corrupted header: the tensors cover ${at} bytes of data but the file has ${dataSize}: no tensor holds data bytes ${at}..${dataSize}`;
  return { metadata, entries };
}

function validateEntry(name: string, raw: unknown): HeaderEntry | string {
  const where = `tensor "${name}"`;
  if (!isObject(raw)) return `corrupted header: ${where} is ${describe(raw)}, not {dtype, shape, data_offsets}`;
  const { dtype, shape, data_offsets: offsets } = raw;
  if (typeof dtype !== 'string' || !(dtype in DTYPE_BYTES)) {
    return `${where}: unsupported dtype ${JSON.stringify(dtype)} (supported: ${Object.keys(DTYPE_BYTES).join(', ')})`;
  }
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    return `corrupted header: ${where} shape ${JSON.stringify(shape)} is not a list of non-negative integers`;
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
    return `corrupted header: ${where} data_offsets ${JSON.stringify(offsets)} are not two non-negative integers [begin, end]`;
  }
  const [begin, end] = offsets as [number, number];
  if (end < begin) return `corrupted header: ${where} data_offsets [${begin},${end}] end before they begin`;
  let count = 1;
  for (const d of shape as number[]) {
    count *= d;
    if (count > Number.MAX_SAFE_INTEGER) return `corrupted header: ${where} shape ${JSON.stringify(shape)} has more elements than can be addressed`;
  }
  const expected = count * DTYPE_BYTES[dtype as DType];
  if (end - begin !== expected) {
    return `corrupted header: ${where} data_offsets [${begin},${end}] hold ${end - begin} bytes, but ${dtype} ${JSON.stringify(shape)} needs ${expected}`;
  }
  return { dtype: dtype as DType, shape: shape as number[], begin, end };
}
