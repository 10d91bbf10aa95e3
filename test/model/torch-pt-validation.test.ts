// Malformed pickles and .pt files found by the fuzz pass (and their relatives), each with its
// expected CheckpointError; pickles are written by hand from the pickle opcode table (pickletools).
import { readFile } from 'node:fs/promises';
import t from 'tap';
import { CheckpointError, openTorchCheckpoint, UnsafePickleError } from '../../src/model/checkpoint/index.ts';
import { PickleEndOfDataError, unpickle, type StorageRef } from '../../src/model/checkpoint/pickle.ts';

const bytes = (...parts: (string | number[] | Uint8Array)[]) => {
  const chunks = parts.map((p) => (typeof p === 'string' ? Uint8Array.from(p, (c) => c.charCodeAt(0)) : Uint8Array.from(p)));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) out.set(c, (at += c.length) - c.length);
  return out;
};
/** BINUNICODE: 'X', u32 length, UTF-8 bytes. */
const str = (s: string) => bytes('X', [s.length, 0, 0, 0], s);
const storage: StorageRef = { kind: 'storage', storageType: 'torch.FloatStorage', key: '0', numel: 4 };
const REBUILD = 'ctorch._utils\n_rebuild_tensor_v2\n';
const EMPTY_ORDERED_DICT = 'ccollections\nOrderedDict\n)R';

t.test('malformed pickles are CheckpointErrors saying what is wrong', async (t) => {
  const cases: [string, Uint8Array, string][] = [
    ['STOP on an empty stack', bytes('\x80\x02.'), 'corrupted pickle at byte 3: stack underflow'],
    ['SETITEM on a list', bytes(']K\x01K\x02s.'), 'SETITEM(S) on something that is not a dict'],
    ['SETITEMS with an odd count', bytes('}(K\x01u.'), 'SETITEMS with a key but no value'],
    ['APPENDS on a dict', bytes('}(K\x01e.'), 'APPEND(S) on something that is not a list'],
    ['BINGET of an unset memo entry', bytes('h\x05.'), 'memo entry 5 was never stored'],
    ['GLOBAL with a name that is not Python', bytes('cX\x0e\x00rR\n\x04}\n.'), 'is not a Python name'],
    ['STACK_GLOBAL on numbers', bytes('K\x01K\x02\x93.'), 'STACK_GLOBAL without a module and a name'],
    ['REDUCE without a tuple', bytes('ccollections\nOrderedDict\nK\x01R.'), 'REDUCE of collections.OrderedDict without an argument tuple'],
    ['REDUCE of a number', bytes('K\x01)R.'), 'REDUCE on a non-callable'],
    ['calling a storage type', bytes('ctorch\nFloatStorage\n)R.'), 'cannot call torch.FloatStorage'],
    ['BINPERSID of a number', bytes('K\x01Q.'), 'a persistent id that is not a tuple'],
    ['_rebuild_tensor_v2 without a storage', bytes(REBUILD, '(K\x01K\x00))\x89', EMPTY_ORDERED_DICT, 'tR.'), '_rebuild_tensor_v2 without a storage'],
    ['_rebuild_tensor_v2 with a negative size', bytes(REBUILD, '(]QK\x00J\xff\xff\xff\xff\x85K\x01\x85\x89', EMPTY_ORDERED_DICT, 'tR.'),
      '_rebuild_tensor_v2 with offset 0, size [-1], stride [1]: not a tensor view'],
    ['_rebuild_tensor_v2 with a size and stride of different rank', bytes(REBUILD, '(]QK\x00K\x02K\x02\x86K\x01\x85\x89', EMPTY_ORDERED_DICT, 'tR.'),
      '_rebuild_tensor_v2 with offset 0, size [2,2], stride [1]: not a tensor view'],
    ['an unknown opcode', bytes('\x80\x02\x00'), 'unsupported pickle opcode 0x0'],
    ['a truncated BINUNICODE', bytes('X\xff\x00\x00\x00ab'), 'unexpected end of data (truncated checkpoint?)'],
  ];
  for (const [what, pickle, message] of cases) {
    let err: Error | null = null;
    try {
      unpickle(pickle, 'x.pt', () => storage);
    } catch (e) {
      err = e as Error;
    }
    t.ok(err instanceof CheckpointError, `${what}: a CheckpointError (${err})`);
    t.match(err?.message, `x.pt: `, what);
    t.match(err?.message, message, `${what}: ${err?.message}`);
  }
  // A forbidden global is refused as unsafe, which is also a CheckpointError.
  let unsafe: unknown;
  try {
    unpickle(bytes('cos\nsystem\n.'), 'x.pt', () => storage);
  } catch (e) {
    unsafe = e;
  }
  t.ok(unsafe instanceof UnsafePickleError && unsafe instanceof CheckpointError, 'UnsafePickleError is a CheckpointError');
  // And a well-formed one still builds: {'a': 1} and a tensor view of storage 0.
  t.same(unpickle(bytes('}q\x00(', str('a'), 'K\x01u.'), 'x.pt', () => storage).value, new Map([['a', 1]]));
  const view = unpickle(bytes(REBUILD, '(]QK\x01K\x02K\x03\x86K\x03K\x01\x86\x89', EMPTY_ORDERED_DICT, 'tR.'), 'x.pt', () => storage).value;
  t.same(view, { kind: 'tensor', storage, offset: 1, shape: [2, 3], stride: [3, 1] });
});

const tuple = (xs: number[]) => bytes('(', ...xs.map((x) => bytes('K', [x])), 't');

/**
 * The pickle of {'w': _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())}
 * whose storage is the persistent id ('storage', torch.<type>, '0', 'cpu', numel[, sixth]); the
 * legacy format always has the sixth field, view_metadata: None ('N') or a pickled tuple.
 */
function stateDictPickle(o: { type?: string; numel: number; sixth?: string | Uint8Array; offset: number; size: number[]; stride: number[] }): Uint8Array {
  const pid = bytes('(', str('storage'), `ctorch\n${o.type ?? 'FloatStorage'}\n`, str('0'), str('cpu'), 'J', new Uint8Array(new Int32Array([o.numel]).buffer), o.sixth ?? '', 'tQ');
  const tensor = bytes(REBUILD, '(', pid, 'K', [o.offset], tuple(o.size), tuple(o.stride), '\x89', EMPTY_ORDERED_DICT, 'tR');
  return bytes('\x80\x02}(', str('w'), tensor, 'u.');
}

/**
 * A legacy (pre-1.6) torch.save file by hand: magic, protocol 1001, sys info, {'w': tensor},
 * storage keys ['0'], then storage 0 as an int64 element count and float32 values.
 */
function legacyFile(o: {
  size: number[]; stride: number[]; offset: number; pidNumel: number; diskNumel: number; values: number[]; type?: string; view?: Uint8Array;
  /** In place of the sys info pickle {} and of the main pickle. */
  sysInfo?: Uint8Array; main?: Uint8Array;
}): Uint8Array {
  const magic = bytes('\x80\x02\x8a\x0a', [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19], '.');
  const protocol = bytes('\x80\x02M\xe9\x03.');
  const sysInfo = o.sysInfo ?? bytes('\x80\x02}.');
  const main = o.main ?? stateDictPickle({ ...o, numel: o.pidNumel, sixth: o.view ?? 'N' });
  const keys = bytes('\x80\x02]', str('0'), 'a.');
  const count = new Uint8Array(new BigInt64Array([BigInt(o.diskNumel)]).buffer);
  return bytes(magic, protocol, sysInfo, main, keys, count, new Uint8Array(Float32Array.from(o.values).buffer));
}

/** A zip archive of stored (uncompressed) entries, as torch.save writes (CRCs left 0: the reader does not check them). */
function zipArchive(files: Record<string, Uint8Array>): Uint8Array {
  const locals: Uint8Array[] = [];
  const centrals: Uint8Array[] = [];
  let at = 0;
  for (const [name, data] of Object.entries(files)) {
    const n = new TextEncoder().encode(name);
    const local = new Uint8Array(30 + n.length + data.length);
    const lv = new DataView(local.buffer);
    lv.setUint32(0, 0x04034b50, true);
    lv.setUint32(18, data.length, true);
    lv.setUint32(22, data.length, true);
    lv.setUint16(26, n.length, true);
    local.set(n, 30);
    local.set(data, 30 + n.length);
    const central = new Uint8Array(46 + n.length);
    const cv = new DataView(central.buffer);
    cv.setUint32(0, 0x02014b50, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, n.length, true);
    cv.setUint32(42, at, true);
    central.set(n, 46);
    locals.push(local);
    centrals.push(central);
    at += local.length;
  }
  const cd = bytes(...centrals);
  const eocd = new Uint8Array(22);
  const ev = new DataView(eocd.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, centrals.length, true);
  ev.setUint16(10, centrals.length, true);
  ev.setUint32(12, cd.length, true);
  ev.setUint32(16, at, true);
  return bytes(...locals, cd, eocd);
}

t.test('legacy .pt files: storage counts, views past their storage and expanded views', async (t) => {
  const good = { size: [2, 2], stride: [2, 1], offset: 0, pidNumel: 4, diskNumel: 4, values: [1.5, -2, 3, 4] };
  const ok = await openTorchCheckpoint(legacyFile(good));
  t.same(Array.from(await ok.read('w')), [1.5, -2, 3, 4], 'the hand-made file loads');
  const transposed = await openTorchCheckpoint(legacyFile({ ...good, stride: [1, 2] }));
  t.same(Array.from(await transposed.read('w')), [1.5, 3, -2, 4], 'a transposed view reads column-major storage');
  const cases: [string, Parameters<typeof legacyFile>[0], string][] = [
    ['fewer elements on disk', { ...good, diskNumel: 2, values: [1, 2] }, 'storage 0 holds 2 elements on disk, the pickle says 4'],
    ['a negative count on disk', { ...good, diskNumel: -1 }, 'storage 0 holds -1 elements on disk, the pickle says 4'],
    ['a negative count in the pickle', { ...good, pidNumel: -4 }, 'storage 0 has -4 elements, not a count'],
    ['a view past its storage', { ...good, offset: 1 }, 'tensor "w" (size [2,2], stride [2,1], offset 1) reaches past its storage of 4 elements'],
    ['an expanded view', { ...good, size: [8, 4], stride: [0, 1] },
      'tensor "w" (size [8,4], stride [0,1], offset 0) has 32 elements over a storage of 4: expanded views are not supported'],
  ];
  for (const [what, o, message] of cases) {
    const err = await openTorchCheckpoint(legacyFile(o)).then((src) => src.read('w')).then(() => null, (e: Error) => e);
    t.ok(err instanceof CheckpointError, `${what}: a CheckpointError`);
    t.match(err?.message, message, `${what}: ${err?.message}`);
  }
});

t.test('a zip entry whose local header lies past the end of the file is named', async (t) => {
  const pt = new Uint8Array(await readFile(new URL('../fixtures/adm32-mini.pt', import.meta.url)));
  const view = new DataView(pt.buffer);
  // EOCD (last 22 bytes; no comment) → ZIP64 locator before it → ZIP64 record → central directory.
  const eocd64 = Number(view.getBigUint64(pt.length - 22 - 20 + 8, true));
  const cd = Number(view.getBigUint64(eocd64 + 48, true));
  const nameLen = view.getUint16(cd + 28, true);
  const name = new TextDecoder().decode(pt.subarray(cd + 46, cd + 46 + nameLen));
  view.setUint32(cd + 42, pt.length + 100, true); // the first entry's local header offset
  const err = await openTorchCheckpoint(pt).then(() => null, (e: Error) => e);
  t.ok(err instanceof CheckpointError);
  t.match(err?.message, `corrupted zip entry ${name}: local header at ${pt.length + 100} past the end (${pt.length} bytes)`);
});

t.test('a legacy storage view (the persistent id\'s 6th field) is the slice of its root storage that tensors index', async (t) => {
  // torch < 1.0: ('storage', type, root_key, location, root_numel, (view_key, offset, size)).
  const root = { size: [3], stride: [1], offset: 0, pidNumel: 6, diskNumel: 6, values: [0, 1, 2, 3, 4, 5] };
  const view = (offset: number, size: number) => bytes(str('200'), 'K', [offset], 'K', [size], '\x87');
  const src = await openTorchCheckpoint(legacyFile({ ...root, view: view(3, 3) }));
  t.same(Array.from(await src.read('w')), [3, 4, 5], 'elements 3..5 of the root storage');
  const inner = await openTorchCheckpoint(legacyFile({ ...root, size: [2], offset: 1, view: view(2, 3) }));
  t.same(Array.from(await inner.read('w')), [3, 4], 'the tensor offset counts from the view');
  const cases: [string, Parameters<typeof legacyFile>[0], string][] = [
    ['a view past its root storage', { ...root, view: view(4, 3) }, 'storage 0 of 6 elements has the view ["200",4,3], not (view_key, offset, size) inside it'],
    ['a tensor past its view', { ...root, offset: 1, view: view(0, 3) }, 'tensor "w" (size [3], stride [1], offset 1) reaches past its storage of 3 elements'],
  ];
  for (const [what, o, message] of cases) {
    const err = await openTorchCheckpoint(legacyFile(o)).then((s) => s.read('w')).then(() => null, (e: Error) => e);
    t.ok(err instanceof CheckpointError, `${what}: a CheckpointError`);
    t.match(err?.message, message, `${what}: ${err?.message}`);
  }
});

t.test('an unsupported storage type is named, with the supported ones', async (t) => {
  const good = { size: [1], stride: [1], offset: 0, pidNumel: 1, diskNumel: 1, values: [0, 0] };
  const err = await openTorchCheckpoint(legacyFile({ ...good, type: 'ComplexFloatStorage' })).then(() => null, (e: Error) => e);
  t.ok(err instanceof CheckpointError);
  t.match(err?.message, 'storage 0 has the unsupported type torch.ComplexFloatStorage (supported: torch.FloatStorage, torch.HalfStorage, torch.BFloat16Storage');
});

t.test('a zip archive\'s byteorder record: "big" storages are byte-swapped per element, anything but little/big refused', async (t) => {
  const values = [1.5, -2, 3.25];
  // Each dtype's big-endian bytes of `values` (f16: 0x3e00, 0xc000, 0x4280).
  const dtypes: [string, number, (v: DataView, i: number, x: number) => void][] = [
    ['FloatStorage', 4, (v, i, x) => v.setFloat32(4 * i, x, false)],
    ['DoubleStorage', 8, (v, i, x) => v.setFloat64(8 * i, x, false)],
    ['HalfStorage', 2, (v, i) => v.setUint16(2 * i, [0x3e00, 0xc000, 0x4280][i], false)],
  ];
  const archive = (type: string, data: Uint8Array, byteorder?: string) =>
    zipArchive({
      'archive/data.pkl': stateDictPickle({ type, numel: 3, offset: 0, size: [3], stride: [1] }),
      ...(byteorder === undefined ? {} : { 'archive/byteorder': new TextEncoder().encode(byteorder) }),
      'archive/data/0': data,
      'archive/version': new TextEncoder().encode('3\n'),
    });
  for (const [type, size, write] of dtypes) {
    const big = new Uint8Array(3 * size);
    values.forEach((x, i) => write(new DataView(big.buffer), i, x));
    const src = await openTorchCheckpoint(archive(type, big, 'big'));
    t.same(Array.from(await src.read('w')), values, `${type}, byteorder big`);
    const little = Uint8Array.from({ length: big.length }, (_, i) => big[i - (i % size) + size - 1 - (i % size)]);
    for (const order of ['little', undefined]) {
      const le = await openTorchCheckpoint(archive(type, little, order));
      t.same(Array.from(await le.read('w')), values, `${type}, byteorder ${order ?? 'absent (little)'}`);
    }
  }
  const err = await openTorchCheckpoint(archive('FloatStorage', new Uint8Array(12), 'middle')).then(() => null, (e: Error) => e);
  t.ok(err instanceof CheckpointError);
  t.match(err?.message, 'archive/byteorder says "middle": the byte order must be "little" or "big"');
});

t.test('a legacy .pt whose pickles run past the first 1 MiB read loads wherever that read ends, inside a GLOBAL line too', async (t) => {
  // openLegacy parses the pickles from the first 1 MiB and reads more when they run past it. A sys
  // info pickle of one long string (the 8 + pad bytes '\x80\x02X', u32 pad, pad bytes, '.') moves
  // the rest so that the 1 MiB mark falls `cut` bytes into it: each opcode of the main pickle
  // (its GLOBALs torch._utils._rebuild_tensor_v2, torch.FloatStorage, collections.OrderedDict
  // included), of the storage keys, and the storage after them.
  const good = { size: [2, 2], stride: [2, 1], offset: 0, pidNumel: 4, diskNumel: 4, values: [1.5, -2, 3, 4] };
  const sysInfo = (pad: number) => bytes('\x80\x02X', new Uint8Array(new Uint32Array([pad]).buffer), new Uint8Array(pad), '.');
  const before = 15 + 6 + 8; // the magic number's pickle, the protocol's, the sys info's without its pad
  const rest = legacyFile({ ...good, sysInfo: sysInfo(0) }).subarray(before);
  t.same(rest.subarray(0, 4), bytes('\x80\x02}('), 'the main pickle follows');
  const text = new TextDecoder('latin1').decode(rest);
  const inGlobal = (cut: number) => [...text.matchAll(/c[\w.]+\n\w+\n/g)].some((m) => m.index! < cut && cut < m.index! + m[0].length);
  let cutLines = 0;
  for (let cut = 1; cut < rest.length; cut++) {
    const file = legacyFile({ ...good, sysInfo: sysInfo((1 << 20) - before - cut) });
    if (file[(1 << 20) - 1] !== rest[cut - 1] || file.length !== (1 << 20) + rest.length - cut) t.fail(`cut ${cut}: the 1 MiB mark is elsewhere`);
    const where = `1 MiB read ends ${cut} bytes into the main pickle${inGlobal(cut) ? ', inside a GLOBAL line' : ''}`;
    if (inGlobal(cut)) cutLines++;
    const got = await openTorchCheckpoint(file).then(async (src) => Array.from(await src.read('w')), (e: Error) => e.message);
    if (!Array.isArray(got) || got.join() !== good.values.join()) t.fail(`${where}: ${got}`);
  }
  t.ok(cutLines >= 60, `${cutLines} of the cuts inside a GLOBAL's lines`);
});

t.test('a pickle cut inside a GLOBAL line is an end-of-data error (the caller may read more); a line without end is corrupted', async (t) => {
  const cases: [string, Uint8Array, string, boolean][] = [
    ['cut in the module line', bytes('\x80\x02ctor'), 'corrupted pickle at byte 3: unexpected end of data (truncated checkpoint?) inside a GLOBAL line', true],
    ['cut in the name line', bytes('\x80\x02ctorch\nFloatSto'), 'corrupted pickle at byte 9: unexpected end of data (truncated checkpoint?) inside a GLOBAL line', true],
    ['cut right after the opcode', bytes('\x80\x02c'), 'corrupted pickle at byte 3: unexpected end of data (truncated checkpoint?) inside a GLOBAL line', true],
    ['a line of 2000 bytes without a newline', bytes('\x80\x02c', 'x'.repeat(2000), '\n.'), 'corrupted pickle at byte 3: a GLOBAL line runs over 1024 bytes without a newline: not a module or name', false],
  ];
  for (const [what, pickle, message, endOfData] of cases) {
    let err: Error | null = null;
    try {
      unpickle(pickle, 'x.pt', () => storage);
    } catch (e) {
      err = e as Error;
    }
    t.ok(err instanceof CheckpointError, `${what}: a CheckpointError`);
    t.equal(err instanceof PickleEndOfDataError, endOfData, `${what}: ${endOfData ? '' : 'not '}an end-of-data error`);
    t.match(err?.message, `x.pt: ${message}`, `${what}: ${err?.message}`);
  }
  // A legacy file that ends inside a GLOBAL line (truncated) says so once the whole file is read.
  const file = legacyFile({ size: [1], stride: [1], offset: 0, pidNumel: 1, diskNumel: 1, values: [1] });
  const cut = new TextDecoder('latin1').decode(file).indexOf('ctorch\nFloatStorage\n') + 10; // in 'FloatStorage'
  const err = await openTorchCheckpoint(file.subarray(0, cut)).then(() => null, (e: Error) => e);
  t.ok(err instanceof CheckpointError);
  t.match(err?.message, `<memory>: corrupted pickle at byte ${cut - 3}: unexpected end of data (truncated checkpoint?) inside a GLOBAL line`);
});

t.test('a dict holding state_dicts one level down (a training checkpoint) names them and says how to extract one; nothing is picked', async (t) => {
  const tensor = bytes(REBUILD, '(', bytes('(', str('storage'), 'ctorch\nFloatStorage\n', str('0'), str('cpu'), 'K\x02NtQ'), 'K\x00', tuple([2]), tuple([1]), '\x89', EMPTY_ORDERED_DICT, 'tR');
  const sd = bytes(EMPTY_ORDERED_DICT, '(', str('weight'), tensor, str('bias'), tensor, 'u');
  const dict = (...items: Parameters<typeof bytes>) => bytes('\x80\x02}(', ...items, 'u.');
  const file = (main: Uint8Array) => zipArchive({ 'archive/data.pkl': main, 'archive/data/0': new Uint8Array(Float32Array.of(1, 2).buffer) });
  const cases: [string, Uint8Array, string][] = [
    ["{'state_dict': sd}", dict(str('state_dict'), sd),
      "<memory>: not a state_dict: a dict of the key 'state_dict' (a training checkpoint?) whose tensors are one level down, in the state_dict 'state_dict' (2 tensors). " +
        "Save it as a state_dict of its own and load that; in Python: ckpt = torch.load(path, map_location='cpu'); torch.save(ckpt['state_dict'], 'state_dict.pt')"],
    ["{'model': sd, 'ema': sd, 'step': 100}", dict(str('model'), sd, str('ema'), sd, str('step'), 'Kd'),
      "<memory>: not a state_dict: a dict of the keys 'model', 'ema', 'step' (a training checkpoint?) whose tensors are one level down, in the state_dicts 'model' (2 tensors), 'ema' (2 tensors). " +
        "Save the one wanted as a state_dict of its own and load that; in Python: ckpt = torch.load(path, map_location='cpu'); torch.save(ckpt['ema'], 'ema.pt')"],
    ["{'step': 100, 'args': {'lr': 0.1}}: no tensors anywhere", dict(str('step'), 'Kd', str('args'), '}', str('lr'), 'G', [0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a], 's'),
      '<memory>: not a state_dict: the pickled dict holds no tensors'],
  ];
  for (const [what, main, message] of cases) {
    const err = await openTorchCheckpoint(file(main)).then(() => null, (e: Error) => e);
    t.ok(err instanceof CheckpointError, `${what}: a CheckpointError`);
    t.equal(err?.message, message, what);
  }
  // The same from torch.save itself (test/fixtures/make-nested.py), in the zip and the legacy format.
  const fixture = (f: string) => new URL(`../fixtures/${f}`, import.meta.url).pathname;
  for (const [f, message] of [
    ['nested-ema.pt', /: not a state_dict: a dict of the keys 'model', 'ema', 'step', 'optimizer' \(a training checkpoint\?\) whose tensors are one level down, in the state_dicts 'model' \(2 tensors\), 'ema' \(2 tensors\)\. .*torch\.save\(ckpt\['ema'\], 'ema\.pt'\)$/],
    ['nested-legacy.pt', /: not a state_dict: a dict of the key 'state_dict' .* in the state_dict 'state_dict' \(2 tensors\)\. .*torch\.load\('[^']*nested-legacy\.pt', map_location='cpu'\); torch\.save\(ckpt\['state_dict'\], 'state_dict\.pt'\)$/],
  ] as const) {
    const err = await openTorchCheckpoint(fixture(f)).then(() => null, (e: Error) => e);
    t.ok(err instanceof CheckpointError, `${f}: a CheckpointError`);
    t.match(err?.message, message, `${f}: ${err?.message}`);
  }
});
