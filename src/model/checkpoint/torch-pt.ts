// PyTorch checkpoints without Python: the zip format of torch.save (>= 1.6: <name>/data.pkl plus one
// stored entry per storage, <name>/data/<key>) and the legacy format (a sequence of pickles —
// magic number, protocol, sys info, the object, the storage keys — then each storage as an int64
// element count followed by its raw bytes). Tensors are decoded lazily, one at a time.
import { type ByteSource, openSource } from './byte-source.ts';
import { byteSwapped, DTYPE_BYTES, type DType, toFloat32 } from './dtype.ts';
import { PickleEndOfDataError, type PickleValue, type StorageRef, type TensorRef, unpickle } from './pickle.ts';
import { CheckpointError } from './checkpoint-error.ts';
import type { TensorInfo, TensorSource } from './tensor-source.ts';
import { isZip, readZipDirectory, type ZipEntry } from './zip.ts';

const STORAGE_DTYPES: Record<string, DType> = {
  'torch.FloatStorage': 'F32',
  'torch.HalfStorage': 'F16',
  'torch.BFloat16Storage': 'BF16',
  'torch.DoubleStorage': 'F64',
  'torch.LongStorage': 'I64',
  'torch.IntStorage': 'I32',
  'torch.ByteStorage': 'U8',
  'torch.CharStorage': 'I8',
  'torch.BoolStorage': 'BOOL',
};

const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

/** LONG1 of 10 bytes: LEGACY_MAGIC as pickled, the first thing a legacy torch.save writes. */
const LEGACY_MAGIC_PICKLED = Uint8Array.of(0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19);
/** LEGACY_MAGIC as pickle protocols 0 and 1 write it: a LONG, in decimal, with no PROTO before it. */
const LEGACY_MAGIC_TEXT = new TextEncoder().encode(`L${LEGACY_MAGIC}L\n`);
/** The bytes isLegacyTorch needs at most: PROTO, a FRAME (protocol 4 and 5), the pickled magic; or the magic as text. */
export const LEGACY_HEAD_BYTES = Math.max(2 + 9 + LEGACY_MAGIC_PICKLED.length, LEGACY_MAGIC_TEXT.length);
export const LEGACY_HEAD_DESCRIPTION = `a pickle PROTO opcode (80 02 for the default pickle_protocol 2) and the magic number 8a 0a 6c fc 9c 46 f9 20 6a a8 50 19 (with pickle_protocol 1: the text "L${LEGACY_MAGIC}L")`;

/**
 * Whether `head` starts as torch.save's legacy format does: PROTO 2–5 (from 4 a FRAME may follow),
 * then the magic number; or, with pickle_protocol 1, the magic number as a LONG in text.
 */
export function isLegacyTorch(head: Uint8Array): boolean {
  if (head.length >= LEGACY_MAGIC_TEXT.length && LEGACY_MAGIC_TEXT.every((b, i) => head[i] === b)) return true;
  if (head[0] !== 0x80 || head[1] < 2 || head[1] > 5) return false;
  const at = head[2] === 0x95 ? 11 : 2;
  return head.length >= at + LEGACY_MAGIC_PICKLED.length && LEGACY_MAGIC_PICKLED.every((b, i) => head[at + i] === b);
}

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

function storageFromPid(file: string, pid: PickleValue[]): StorageRef {
  const [tag, type, key, , numel, viewMetadata] = pid as [unknown, { global?: unknown } | null, unknown, unknown, unknown, unknown];
  const storageType = typeof type === 'object' && type !== null ? type.global : undefined;
  if (tag !== 'storage' || typeof storageType !== 'string') {
    const shown = pid.map((v) => (typeof v === 'object' && v !== null && 'global' in v ? String(v.global) : String(v)));
    throw new CheckpointError(file, `unsupported persistent id ${JSON.stringify(shown)}: not ('storage', <type>, key, location, numel)`);
  }
  if (!(storageType in STORAGE_DTYPES)) {
    throw new CheckpointError(file, `storage ${String(key)} has the unsupported type ${storageType} (supported: ${Object.keys(STORAGE_DTYPES).join(', ')})`);
  }
  if (typeof key !== 'string' && typeof key !== 'number') throw new CheckpointError(file, `a storage key ${String(key)} that is not a name`);
  if (!isCount(numel)) throw new CheckpointError(file, `storage ${key} has ${String(numel)} elements, not a count`);
  const storage: StorageRef = { kind: 'storage', storageType, key: String(key), numel };
  if (viewMetadata === undefined || viewMetadata === null) return storage;
  // torch.save before 1.0 wrote a storage view as (view_key, offset, size), in elements of the
  // root storage; torch.serialization._legacy_load slices the root storage to those elements.
  const [, offset, size] = Array.isArray(viewMetadata) ? viewMetadata : [];
  if (!Array.isArray(viewMetadata) || viewMetadata.length !== 3 || !isCount(offset) || !isCount(size) || offset + size > numel) {
    throw new CheckpointError(file, `storage ${key} of ${numel} elements has the view ${JSON.stringify(viewMetadata)}, not (view_key, offset, size) inside it`);
  }
  return { ...storage, view: { offset, size } };
}

function isTensorRef(v: unknown): v is TensorRef {
  return !!v && typeof v === 'object' && (v as TensorRef).kind === 'tensor';
}

/** The tensors of a dict under string keys. */
function tensorsOf(dict: Map<unknown, unknown>): Map<string, TensorRef> {
  const out = new Map<string, TensorRef>();
  for (const [k, v] of dict) if (typeof k === 'string' && isTensorRef(v)) out.set(k, v);
  return out;
}

/** A Python string literal for `s`. */
const pyString = (s: string) => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'").replace(/\n/g, '\\n')}'`;

function collectTensors(file: string, root: PickleValue): Map<string, TensorRef> {
  if (!(root instanceof Map)) throw new CheckpointError(file, 'not a state_dict: the pickled object is not a dict');
  const out = tensorsOf(root);
  if (out.size > 0) return out;
  // A training checkpoint ({'state_dict': sd}, {'model': sd, 'ema': sd_ema, 'step': n, …}) holds
  // state_dicts one level down. Which one is meant (live or EMA weights, model or discriminator…)
  // is the user's choice, and the weights loaded must be the bytes of the file named (their hash
  // is recorded), so none is picked here, not even a lone one: the error says how to extract it.
  const nested = [...root].filter(([k, v]) => typeof k === 'string' && v instanceof Map && tensorsOf(v).size > 0) as [string, Map<unknown, unknown>][];
  if (nested.length === 0) throw new CheckpointError(file, 'not a state_dict: the pickled dict holds no tensors');
  const keys = [...root.keys()].map((k) => (typeof k === 'string' ? pyString(k) : String(k)));
  const shownKeys = `${keys.slice(0, 8).join(', ')}${keys.length > 8 ? `, … and ${keys.length - 8} more` : ''}`;
  const shown = nested.slice(0, 8).map(([k, v]) => `${pyString(k)} (${tensorsOf(v).size} tensor${tensorsOf(v).size === 1 ? '' : 's'})`);
  const candidates = `${shown.join(', ')}${nested.length > 8 ? `, … and ${nested.length - 8} more` : ''}`;
  const example = (nested.find(([k]) => k === 'ema') ?? nested[0])[0];
  const name = /^[\w.-]{1,64}$/.test(example) ? example : 'weights';
  throw new CheckpointError(
    file,
    `not a state_dict: a dict of the key${keys.length > 1 ? 's' : ''} ${shownKeys} (a training checkpoint?) whose tensors are one level down, in the ${nested.length > 1 ? 'state_dicts' : 'state_dict'} ${candidates}. ` +
      `Save ${nested.length > 1 ? 'the one wanted' : 'it'} as a state_dict of its own and load that; in Python: ckpt = torch.load(${file.startsWith('<') ? 'path' : pyString(file)}, map_location='cpu'); torch.save(ckpt[${pyString(example)}], ${pyString(`${name}.pt`)})`,
  );
}

/** Where each storage's bytes start in the file. */
type StorageLocator = (s: StorageRef) => number;

function tensorSource(src: ByteSource, tensors: Map<string, TensorRef>, locate: StorageLocator, bigEndian = false): TensorSource {
  return {
    name: src.name,
    metadata: {},
    keys: () => [...tensors.keys()],
    info(k): TensorInfo | undefined {
      const t = tensors.get(k);
      return t && { dtype: STORAGE_DTYPES[t.storage.storageType], shape: t.shape };
    },
    async read(k) {
      const t = tensors.get(k);
      if (!t) throw new CheckpointError(src.name, `no tensor named "${k}"`);
      const dtype = STORAGE_DTYPES[t.storage.storageType];
      const es = DTYPE_BYTES[dtype];
      const count = t.shape.reduce((p, d) => p * d, 1);
      if (count === 0) return new Float32Array(0);
      const base = locate(t.storage);
      // The elements the tensor indexes: a legacy storage view's slice, or the whole storage.
      const first = t.storage.view?.offset ?? 0;
      const numel = t.storage.view?.size ?? t.storage.numel;
      // Extent of storage elements the view touches (shape and stride are non-negative integers).
      let span = 1;
      t.shape.forEach((d, i) => (span += (d - 1) * t.stride[i]));
      const view = `tensor "${k}" (size ${JSON.stringify(t.shape)}, stride ${JSON.stringify(t.stride)}, offset ${t.offset})`;
      if (!(t.offset + span <= numel)) throw new CheckpointError(src.name, `${view} reaches past its storage of ${numel} elements`);
      // An expanded view (stride 0) has more elements than its storage; a state_dict never holds one.
      if (count > numel) throw new CheckpointError(src.name, `${view} has ${count} elements over a storage of ${numel}: expanded views are not supported (save contiguous tensors)`);
      const bytes = await src.read(base + (first + t.offset) * es, span * es);
      const raw = toFloat32(dtype, bigEndian ? byteSwapped(bytes, es) : bytes, span);
      let contiguous = true;
      let s = 1;
      for (let i = t.shape.length - 1; i >= 0; i--) {
        if (t.shape[i] !== 1 && t.stride[i] !== s) contiguous = false;
        s *= t.shape[i];
      }
      if (contiguous) return raw.subarray(0, count);
      const out = new Float32Array(count);
      const idx = new Array<number>(t.shape.length).fill(0);
      for (let i = 0; i < count; i++) {
        let o = 0;
        for (let d = 0; d < idx.length; d++) o += idx[d] * t.stride[d];
        out[i] = raw[o];
        for (let d = idx.length - 1; d >= 0; d--) {
          if (++idx[d] < t.shape[d]) break;
          idx[d] = 0;
        }
      }
      return out;
    },
    close: () => src.close(),
  };
}

async function openZip(src: ByteSource): Promise<TensorSource> {
  const entries = await readZipDirectory(src);
  const pkl = [...entries.values()].find((e) => e.name.endsWith('/data.pkl') || e.name === 'data.pkl');
  if (!pkl) throw new CheckpointError(src.name, 'a zip file without data.pkl: not a torch.save checkpoint');
  const prefix = pkl.name.slice(0, pkl.name.length - 'data.pkl'.length);
  for (const e of entries.values()) {
    if (e.method !== 0 && e.name.startsWith(prefix)) throw new CheckpointError(src.name, `entry ${e.name} is compressed (method ${e.method}); torch.save stores entries uncompressed`);
  }
  const { value } = unpickle(await src.read(pkl.dataOffset, pkl.size), src.name, (pid) => storageFromPid(src.name, pid));
  const tensors = collectTensors(src.name, value);
  const bigEndian = (await byteOrder(src, entries.get(`${prefix}byteorder`))) === 'big';
  return tensorSource(src, tensors, (s) => {
    const e = entries.get(`${prefix}data/${s.key}`);
    if (!e) throw new CheckpointError(src.name, `storage ${s.key} is missing from the archive`);
    const need = s.numel * DTYPE_BYTES[STORAGE_DTYPES[s.storageType]];
    if (e.size < need) throw new CheckpointError(src.name, `storage ${s.key} has ${e.size} bytes, ${need} expected (truncated?)`);
    return e.dataOffset;
  }, bigEndian);
}

/**
 * The byte order of the storages: torch.save >= 2.1 writes it to `<prefix>byteorder`, and
 * torch.serialization._load byte-swaps each storage (per element of its dtype) when it differs
 * from the machine's, refusing any value other than "little" or "big". Without the record,
 * torch.load assumes little-endian.
 */
async function byteOrder(src: ByteSource, record: ZipEntry | undefined): Promise<'little' | 'big'> {
  if (!record) return 'little';
  const text = new TextDecoder().decode(await src.read(record.dataOffset, Math.min(record.size, 16)));
  if (text === 'little' || text === 'big') return text;
  throw new CheckpointError(src.name, `${record.name} says ${JSON.stringify(text)}${record.size > 16 ? '…' : ''}: the byte order must be "little" or "big"`);
}

async function openLegacy(src: ByteSource): Promise<TensorSource> {
  // The pickles come first; read a growing prefix until they parse.
  let length = Math.min(src.size, 1 << 20);
  for (;;) {
    const head = await src.read(0, length);
    try {
      const magic = unpickle(head, src.name, () => null, 0);
      if (magic.value !== LEGACY_MAGIC) throw new CheckpointError(src.name, 'not a PyTorch checkpoint (neither a zip archive nor the legacy magic number)');
      const protocol = unpickle(head, src.name, () => null, magic.end);
      if (protocol.value !== 1001) throw new CheckpointError(src.name, `unsupported legacy protocol ${String(protocol.value)}`);
      const sysInfo = unpickle(head, src.name, () => null, protocol.end);
      const storages = new Map<string, StorageRef>();
      const main = unpickle(head, src.name, (pid) => {
        const s = storageFromPid(src.name, pid);
        storages.set(s.key, s);
        return s;
      }, sysInfo.end);
      const keys = unpickle(head, src.name, () => null, main.end);
      // Storages follow in the order of `keys`, each as an int64 element count and its bytes.
      const offsets = new Map<string, number>();
      let at = keys.end;
      if (!Array.isArray(keys.value)) throw new CheckpointError(src.name, 'corrupted legacy checkpoint: the storage keys are not a list');
      for (const key of keys.value as unknown[]) {
        const s = storages.get(String(key));
        if (!s) throw new CheckpointError(src.name, `storage key ${key} is not used by any tensor`);
        if (at + 8 > src.size) throw new CheckpointError(src.name, `truncated before storage ${key}`);
        const countBytes = await src.read(at, 8);
        const numel = Number(new DataView(countBytes.buffer, countBytes.byteOffset, 8).getBigInt64(0, true));
        if (!Number.isSafeInteger(numel) || numel < s.numel) {
          throw new CheckpointError(src.name, `storage ${key} holds ${numel} elements on disk, the pickle says ${s.numel}`);
        }
        const bytes = numel * DTYPE_BYTES[STORAGE_DTYPES[s.storageType]];
        if (at + 8 + bytes > src.size) throw new CheckpointError(src.name, `truncated: storage ${key} ends at byte ${at + 8 + bytes}, the file has ${src.size}`);
        offsets.set(s.key, at + 8);
        at += 8 + bytes;
      }
      return tensorSource(src, collectTensors(src.name, main.value), (s) => {
        const offset = offsets.get(s.key);
        if (offset === undefined) throw new CheckpointError(src.name, `storage ${s.key} is used by a tensor but missing from the file`);
        return offset;
      });
    } catch (e) {
      // A pickle cut by the end of the prefix read (in any opcode, a GLOBAL's lines included): read more.
      if (!(e instanceof PickleEndOfDataError) || length >= src.size) throw e;
      length = Math.min(src.size, length * 4);
    }
  }
}

/** Opens a .pt/.pth state_dict checkpoint (zip or legacy format) as a lazy tensor source. */
export async function openTorchCheckpoint(input: string | Uint8Array): Promise<TensorSource> {
  const src = await openSource(input);
  try {
    if (src.size < 4) throw new CheckpointError(src.name, `${src.size} bytes: not a checkpoint`);
    return isZip(await src.read(0, 4)) ? await openZip(src) : await openLegacy(src);
  } catch (e) {
    await src.close();
    throw e;
  }
}
