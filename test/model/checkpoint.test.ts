import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import {
  CheckpointError, encodeSafetensors, openCheckpoint, openSafetensors, UnsafePickleError, withPrefix, writeSafetensors,
} from '../../src/model/checkpoint/index.ts';
import { CheckpointMismatchError, UNet } from '../../src/model/unet.ts';
import { flagsFromJson } from '../../src/model/unet-config.ts';
import { testEngine } from '../helpers/check.ts';

const fixture = (f: string) => new URL(`../fixtures/${f}`, import.meta.url).pathname;
const reference = await openSafetensors(fixture('adm32-mini.safetensors'));
t.teardown(() => reference.close());

/** float32 → nearest float16 (ties to even) → float32, written independently of the loader. */
function roundToHalf(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const a = Math.abs(x);
  const e = Math.max(Math.floor(Math.log2(a)), -14); // subnormals share the exponent of 2^-14
  const ulp = 2 ** (e - 10);
  let q = a / ulp;
  const fl = Math.floor(q);
  const frac = q - fl;
  q = frac > 0.5 || (frac === 0.5 && fl % 2 === 1) ? fl + 1 : fl;
  return Math.sign(x) * Math.min(q * ulp, 65504);
}

for (const file of ['adm32-mini.pt', 'adm32-mini-legacy.pt']) {
  t.test(`${file} loads to exactly the reference param.* tensors`, async (t) => {
    const pt = await openCheckpoint(fixture(file));
    const keys = reference.keys().filter((k) => k.startsWith('param.')).map((k) => k.slice(6));
    t.same(new Set(pt.keys()), new Set(keys), 'same key set');
    let mismatches = 0;
    for (const k of keys) {
      t.same(pt.info(k)!.shape, reference.info(`param.${k}`)!.shape);
      const a = await pt.read(k);
      const r = await reference.read(`param.${k}`);
      for (let i = 0; i < r.length; i++) if (a[i] !== r[i]) mismatches++;
    }
    t.equal(mismatches, 0, 'bit-identical');
    await pt.close();
  });
}

t.test('adm32-mini-f16.pt loads to param.* rounded to float16 (nearest even), widened exactly', async (t) => {
  const pt = await openCheckpoint(fixture('adm32-mini-f16.pt'));
  let mismatches = 0;
  let total = 0;
  for (const k of pt.keys()) {
    t.equal(pt.info(k)!.dtype, 'F16');
    const a = await pt.read(k);
    const r = await reference.read(`param.${k}`);
    for (let i = 0; i < r.length; i++, total++) if (a[i] !== roundToHalf(r[i])) mismatches++;
  }
  t.equal(mismatches, 0, `${total} values`);
  await pt.close();
});

t.test('a checkpoint whose pickle calls builtins.print is refused, naming the global', async (t) => {
  const err = await openCheckpoint(fixture('hostile-code.pt')).then(() => null, (e: Error) => e);
  t.ok(err instanceof UnsafePickleError);
  t.match(err!.message, /builtins\.print/);
  t.match(err!.message, /Nothing was executed/);
});

t.test('a truncated or corrupted checkpoint gives a clear CheckpointError', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-ckpt-'));
  const bytes = await readFile(fixture('adm32-mini.safetensors'));
  const cases: [string, Uint8Array, RegExp][] = [
    ['truncated.safetensors', bytes.subarray(0, bytes.length - 1000), /truncated: tensor ".*" ends at byte \d+ but the file has \d+ bytes/],
    ['header.safetensors', Uint8Array.from([...bytes.subarray(0, 8), ...new TextEncoder().encode('{"oops')]), /not a safetensors file or truncated|corrupted header/],
    ['tiny.safetensors', bytes.subarray(0, 5), /shorter than the 8-byte header length/],
  ];
  const pt = await readFile(fixture('adm32-mini.pt'));
  cases.push(['truncated.pt', pt.subarray(0, pt.length - 5000), /truncated|end-of-central-directory|corrupted/]);
  const legacy = await readFile(fixture('adm32-mini-legacy.pt'));
  cases.push(['truncated-legacy.pt', legacy.subarray(0, legacy.length - 5000), /truncated/]);
  for (const [name, data, pattern] of cases) {
    const path = join(dir, name);
    await writeFile(path, data);
    const err = await openCheckpoint(path).then(async (src) => {
      try {
        for (const k of src.keys()) await src.read(k);
      } finally {
        await src.close();
      }
      return null;
    }, (e: Error) => e).catch((e: Error) => e);
    t.ok(err instanceof CheckpointError, `${name}: a CheckpointError`);
    t.match(err?.message, pattern, `${name}: ${err?.message}`);
    t.match(err?.message, name, 'names the file');
  }
  await rm(dir, { recursive: true });
});

t.test('a checkpoint for another config names the missing/unexpected keys and both shapes', async (t) => {
  const e = await testEngine();
  const adm64 = await openSafetensors(fixture('adm64.safetensors'));
  const err = await UNet.load(e, flagsFromJson(adm64.metadata.config), withPrefix(reference, 'param.')).then(() => null, (x: Error) => x);
  t.ok(err instanceof CheckpointMismatchError);
  t.match(err!.message, /missing keys \(\d+\): .*input_blocks/);
  t.match(err!.message, /shape mismatch for input_blocks\.0\.0\.weight|shape mismatch for \S+: checkpoint \[[\d,]+\], model \[[\d,]+\]/);
  await adm64.close();
});

t.test('a checkpoint made with the other resblock_updown setting says which one to set', async (t) => {
  const e = await testEngine();
  const conv = await openSafetensors(fixture('conv-resample.safetensors'));
  const convFlags = flagsFromJson(conv.metadata.config);
  const asResBlocks = await UNet.load(e, { ...convFlags, resblock_updown: true }, withPrefix(conv, 'param.')).then(() => null, (x: Error) => x);
  t.ok(asResBlocks instanceof CheckpointMismatchError);
  t.match(asResBlocks!.message, /unexpected keys \(\d+\): .*input_blocks\.2\.0\.op\.weight/);
  t.match(asResBlocks!.message, 'input_blocks.2.0 is a conv Downsample in the checkpoint (input_blocks.2.0.op.weight): set resblock_updown false');
  const refFlags = flagsFromJson(reference.metadata.config);
  const asConv = await UNet.load(e, { ...refFlags, resblock_updown: false }, withPrefix(reference, 'param.')).then(() => null, (x: Error) => x);
  t.ok(asConv instanceof CheckpointMismatchError);
  t.match(asConv!.message, 'input_blocks.2.0 is a ResBlock in the checkpoint (input_blocks.2.0.in_layers.*): set resblock_updown true');
  await conv.close();
});

t.test('safetensors written by our writer round-trip, atomically, and large files stream tensor by tensor', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-st-'));
  const path = join(dir, 'big.safetensors');
  // 4 tensors of 48 MiB: 192 MiB on disk; reading one must not pull in the others.
  const n = 12 * 1024 * 1024;
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (let k = 0; k < 4; k++) {
    const data = new Float32Array(n);
    for (let i = 0; i < n; i += 4099) data[i] = k + i / n;
    tensors[`w${k}`] = { shape: [n / 1024, 1024], data };
  }
  await writeSafetensors(path, tensors, { note: 'synthetic' });
  for (const k of Object.keys(tensors)) (tensors as Record<string, unknown>)[k] = null;
  const before = process.memoryUsage().rss;
  const src = await openSafetensors(path);
  t.equal(src.metadata.note, 'synthetic');
  const w2 = await src.read('w2');
  const grown = process.memoryUsage().rss - before;
  t.equal(w2[4099 * 7], Math.fround(2 + (4099 * 7) / n));
  t.ok(grown < 80 * 1024 * 1024, `memory grew by ${(grown / 2 ** 20).toFixed(0)} MiB reading one 48 MiB tensor of a 192 MiB file`);
  await src.close();
  const small = encodeSafetensors({ a: { shape: [2], data: Float32Array.from([1.5, -2]) }, n: { shape: [1], data: BigInt64Array.from([7n]) } });
  const back = await openSafetensors(small);
  t.same(Array.from(await back.read('a')), [1.5, -2]);
  t.same(Array.from(await back.read('n')), [7]);
  await rm(dir, { recursive: true });
});
