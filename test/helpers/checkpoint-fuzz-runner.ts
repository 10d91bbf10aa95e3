// Child process of test/model/checkpoint-fuzz.test.ts: corrupts the checkpoint fixtures from a
// fixed seed (truncations, bit flips, byte overwrites, edits of offset and length fields), loads
// each result and reads every tensor. One JSON line per case start and end on stdout, so the test
// can tell a hang (no end line) and a crash (the process dies) from an outcome.
//   node --import tsx checkpoint-fuzz-runner.ts <seed> <cases per fixture>
import { readFile } from 'node:fs/promises';
import { CheckpointError, openCheckpoint } from '../../src/model/checkpoint/index.ts';
import { mulberry32 as rng } from '../../src/engine/random.ts';

const FIXTURES = ['adm32-mini.safetensors', 'adm32-mini.pt', 'adm32-mini-legacy.pt', 'adm32-mini-f16.pt'];


interface Case {
  desc: string;
  bytes: Uint8Array;
}

const EDGE_U32 = [0, 1, 0x7fffffff, 0xffffffff, 0xfffffffe];
const EDGE_I64 = [0n, -1n, 1n, 1n << 62n, -(1n << 62n), 0x7fffffffffffffffn];

class Mutator {
  readonly size: number;
  /** Byte ranges holding structure (headers, pickles, zip directory), where corruption matters most. */
  readonly structure: [number, number][];

  constructor(readonly name: string, readonly original: Uint8Array, readonly rand: () => number) {
    this.size = original.length;
    const view = new DataView(original.buffer, original.byteOffset, original.length);
    if (name.endsWith('.safetensors')) this.structure = [[0, 8 + Number(view.getBigUint64(0, true))]];
    else if (original[0] === 0x50) this.structure = [[0, Math.min(this.size, 1 << 16)], [Math.max(0, this.size - (1 << 14)), this.size]];
    else this.structure = [[0, Math.min(this.size, 1 << 16)]];
  }

  int(n: number): number {
    return Math.floor(this.rand() * n);
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  /** A position: mostly inside the structure, sometimes anywhere. */
  position(): number {
    if (this.rand() < 0.3) return this.int(this.size);
    const [a, b] = this.pick(this.structure);
    return a + this.int(b - a);
  }

  copy(): Uint8Array {
    return Uint8Array.from(this.original);
  }

  truncate(): Case {
    const length = this.rand() < 0.2 ? this.pick([0, 1, 4, 7, 8, 9, 30, this.size - 1, this.size - 22]) : this.position();
    return { desc: `truncated to ${length} bytes`, bytes: this.original.slice(0, Math.max(0, length)) };
  }

  flipBits(): Case {
    const bytes = this.copy();
    const at: string[] = [];
    for (let k = 1 + this.int(4); k > 0; k--) {
      const p = this.position();
      const bit = this.int(8);
      bytes[p] ^= 1 << bit;
      at.push(`${p}.${bit}`);
    }
    return { desc: `bits flipped at ${at.join(', ')}`, bytes };
  }

  overwrite(): Case {
    const bytes = this.copy();
    const p = this.position();
    const n = Math.min(1 + this.int(8), this.size - p);
    for (let i = 0; i < n; i++) bytes[p + i] = this.int(256);
    return { desc: `${n} random bytes at ${p}`, bytes };
  }

  /** An offset, length or count field set to an edge or random value. */
  editField(): Case {
    if (this.name.endsWith('.safetensors')) return this.editSafetensorsHeader();
    const bytes = this.copy();
    const view = new DataView(bytes.buffer);
    if (this.original[0] === 0x50) {
      // Zip: a 16/32-bit field of the end-of-central-directory record or of a central entry.
      const cdOffset = view.getUint32(this.size - 22 + 16, true);
      const p = this.rand() < 0.3 ? this.size - 22 + this.pick([8, 10, 12, 16, 20]) : cdOffset + this.int(this.size - 22 - cdOffset);
      const value = this.rand() < 0.5 ? this.pick(EDGE_U32) : this.int(this.size * 2);
      if (this.rand() < 0.5) view.setUint16(Math.min(p, this.size - 2), value & 0xffff, true);
      else view.setUint32(Math.min(p, this.size - 4), value >>> 0, true);
      return { desc: `zip field at ${p} set to ${value}`, bytes };
    }
    // Legacy: an int64 (a storage element count, or bytes of a pickle) set to an edge value.
    const p = Math.min(this.position(), this.size - 8);
    const value = this.pick(EDGE_I64);
    view.setBigInt64(p, value, true);
    return { desc: `int64 at ${p} set to ${value}`, bytes };
  }

  editSafetensorsHeader(): Case {
    const view = new DataView(this.original.buffer, this.original.byteOffset, this.size);
    const headerLen = Number(view.getBigUint64(0, true));
    const data = this.original.subarray(8 + headerLen);
    if (this.rand() < 0.15) {
      // The header length field itself.
      const bytes = this.copy();
      const value = this.pick([0n, 1n, BigInt(headerLen - 1), BigInt(headerLen + 1), BigInt(this.size), 1n << 63n, BigInt(this.int(headerLen * 2))]);
      new DataView(bytes.buffer).setBigUint64(0, value, true);
      return { desc: `header length set to ${value}`, bytes };
    }
    const header = JSON.parse(new TextDecoder().decode(this.original.subarray(8, 8 + headerLen)));
    const names = Object.keys(header).filter((k) => k !== '__metadata__');
    const name = this.pick(names);
    const entry = header[name];
    const [b, e] = entry.data_offsets as [number, number];
    const d = this.pick([1, -1, 4, -4, 8, this.int(1000) - 500]);
    const edits: [string, () => void][] = [
      ['shifted', () => (entry.data_offsets = [b + d, e + d])],
      ['end moved', () => (entry.data_offsets = [b, e + d])],
      ['negated', () => (entry.data_offsets = [-e, -b])],
      ['fractional', () => (entry.data_offsets = [b + 0.5, e])],
      ['reversed', () => (entry.data_offsets = [e, b])],
      ['huge end', () => (entry.data_offsets = [b, this.pick([2 ** 53, 1e300, 2 ** 64])])],
      ['strings', () => (entry.data_offsets = [String(b), String(e)])],
      ['one offset', () => (entry.data_offsets = [b])],
      ['offsets of another tensor', () => (entry.data_offsets = header[this.pick(names)].data_offsets)],
      ['shape grown', () => (entry.shape = [...entry.shape, 2])],
      ['shape negative', () => (entry.shape = entry.shape.map((x: number) => -x))],
      ['shape huge', () => (entry.shape = [2 ** 40, 2 ** 40, 0])],
      ['shape empty', () => (entry.shape = [])],
      ['dtype', () => (entry.dtype = this.pick(['F16', 'BF16', 'F64', 'I64', 'U8', 'Q4', null]))],
      ['removed', () => delete header[name]],
      ['duplicated', () => (header[`${name}.copy`] = { ...entry })],
      ['entry a number', () => (header[name] = 7)],
      ['metadata a number', () => (header.__metadata__ = { note: 3 })],
    ];
    const [what, edit] = this.pick(edits);
    edit();
    const json = new TextEncoder().encode(JSON.stringify(header));
    const bytes = new Uint8Array(8 + json.length + data.length);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
    bytes.set(json, 8);
    bytes.set(data, 8 + json.length);
    return { desc: `tensor "${name}": ${what} (${JSON.stringify(header[name])?.slice(0, 120)})`, bytes };
  }

  next(): Case {
    const r = this.rand();
    if (r < 0.2) return this.truncate();
    if (r < 0.5) return this.flipBits();
    if (r < 0.75) return this.overwrite();
    return this.editField();
  }
}

type Outcome = 'loaded' | 'CheckpointError' | 'other';

/** Opens the bytes and reads every tensor; a load whose tensor lengths disagree with their shapes is 'other'. */
async function attempt(bytes: Uint8Array): Promise<{ outcome: Outcome; error?: string }> {
  try {
    const src = await openCheckpoint(bytes);
    try {
      for (const k of src.keys()) {
        const values = await src.read(k);
        const expected = src.info(k)!.shape.reduce((p, d) => p * d, 1);
        if (values.length !== expected) return { outcome: 'other', error: `silent wrong result: tensor "${k}" read ${values.length} values, its shape says ${expected}` };
      }
    } finally {
      await src.close();
    }
    return { outcome: 'loaded' };
  } catch (e) {
    const error = e instanceof Error ? `${e.name}: ${e.message}`.slice(0, 300) : String(e);
    return { outcome: e instanceof CheckpointError ? 'CheckpointError' : 'other', error };
  }
}

const seed = Number(process.argv[2] ?? 1);
const perFixture = Number(process.argv[3] ?? 80);
const rand = rng(seed);
const emit = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);
let i = 0;
for (const fixture of FIXTURES) {
  const original = new Uint8Array(await readFile(new URL(`../fixtures/${fixture}`, import.meta.url)));
  const mutator = new Mutator(fixture, original, rand);
  for (let k = 0; k < perFixture; k++, i++) {
    const c = mutator.next();
    emit({ start: i, case: `${fixture}: ${c.desc}` });
    emit({ end: i, ...(await attempt(c.bytes)) });
  }
}
emit({ done: i, maxRssMB: Math.round(process.resourceUsage().maxRSS / 1024) });
