import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import {
  CheckpointError, encodeSafetensors, openCheckpoint, openSafetensors, UnsafePickleError, withPrefix, writeSafetensors,
} from '../../src/model/checkpoint/index.ts';
import { isLegacyTorch } from '../../src/model/checkpoint/torch-pt.ts';
import { CheckpointMismatchError, UNet } from '../../src/model/unet.ts';
import type { TensorSource } from '../../src/model/checkpoint/tensor-source.ts';
import { checkStateDict } from '../../src/model/state-dict.ts';
import { flagsFromJson, planUNet, stateDictShapes } from '../../src/model/unet-config.ts';
import { saveTrainingState } from '../../src/train/checkpoint.ts';
import { Adam } from '../../src/train/optimizer.ts';
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

t.test('a shape mismatch offers the config the file records, and lists at most 8 shape mismatches', async (t) => {
  const e = await testEngine();
  const adm64 = await openSafetensors(fixture('adm64.safetensors'));
  const flags = flagsFromJson(adm64.metadata.config);
  await adm64.close();
  const src = withPrefix(reference, 'param.');
  // The shape mismatches, counted here from the two key tables.
  const mismatched = [...stateDictShapes(planUNet(flags))].filter(([k, shape]) => src.info(k) && src.info(k)!.shape.join() !== shape.join());
  t.ok(mismatched.length > 8, `${mismatched.length} shape mismatches`);
  const err = await UNet.load(e, flags, src).then(() => null, (x: Error) => x);
  t.ok(err instanceof CheckpointMismatchError);
  const lines = err!.message.split('\n');
  t.equal(lines.filter((l) => l.startsWith('  shape mismatch for ')).length, 8, 'the first 8 shape mismatches');
  t.ok(lines.includes(`  … and ${mismatched.length - 8} more shape mismatches`), 'and how many more');
  t.ok(lines.includes(`  this file records config ${reference.metadata.config}: give it as the model (a JSON file of these flags)`), 'the recorded config');
  // Without a recorded config, no such line.
  const bare = await UNet.load(e, flags, { ...src, metadata: {} }).then(() => null, (x: Error) => x);
  t.ok(bare instanceof CheckpointMismatchError);
  t.notMatch(bare!.message, /records config/);
});

t.test('a difrep training state given as U-Net weights: load the run\'s ema.safetensors instead', async (t) => {
  const e = await testEngine();
  const dir = await mkdtemp(join(tmpdir(), 'difrep-state-'));
  const path = join(dir, 'state.safetensors');
  // A training state as pretraining writes it (params param.*, Adam moments optim.*), here of a small network.
  const params = new Map([['w', e.keep(e.tensor(Float32Array.of(1, 2, 3, 4), [2, 2], 'w'))]]);
  await saveTrainingState(path, params, new Adam(e, params, { lr: 0.1 }), { epoch: 0, steps: 0 }, { config: { image_size: 32 } });
  const state = await openSafetensors(path);
  const flags = flagsFromJson(reference.metadata.config);
  for (const [what, src] of [['as saved', state], ['its param.* tensors', withPrefix(state, 'param.')]] as const) {
    const err = await UNet.load(e, flags, src).then(() => null, (x: Error) => x);
    t.ok(err instanceof CheckpointMismatchError, what);
    t.match(err?.message, /\n {2}this is a difrep training state \(metadata kind "difrep-training-state": parameters and optimizer moments\), not a model's weights: load the run's ema\.safetensors \(in the same run directory\) instead$/, what);
  }
  await state.close();
  for (const p of params.values()) p.dispose();
  await rm(dir, { recursive: true });
});

t.test('keys with DataParallel\'s module. prefix are named as such; other unexpected keys are not', async (t) => {
  const linear = new Map([['weight', [2, 3]], ['bias', [2]]]);
  const dataParallel = await openCheckpoint(fixture('dataparallel.pt'));
  t.same(dataParallel.keys(), ['module.weight', 'module.bias']);
  const hint = "the keys carry DataParallel's 'module.' prefix: strip it";
  t.throws(() => checkStateDict(linear, dataParallel, 'linear layer'), { name: 'CheckpointMismatchError', message: hint });
  await dataParallel.close();
  // A U-Net state_dict saved from nn.DataParallel(model).
  const src = withPrefix(reference, 'param.');
  const prefixed = (prefix: string, keys = src.keys()): TensorSource => ({
    ...src,
    keys: () => keys.map((k) => prefix + k),
    info: (k) => (k.startsWith(prefix) ? src.info(k.slice(prefix.length)) : undefined),
  });
  const e = await testEngine();
  const flags = flagsFromJson(reference.metadata.config);
  const err = await UNet.load(e, flags, prefixed('module.')).then(() => null, (x: Error) => x);
  t.ok(err instanceof CheckpointMismatchError);
  t.notMatch(err?.message, /records config/, 'the config recorded builds the model asked for: not offered');
  t.match(err?.message, `\n  ${hint} (in Python: save {k.removeprefix('module.'): v for k, v in sd.items()} instead of sd, or model.module.state_dict() instead of model.state_dict())`);
  // Another prefix, or a module.* key that is not a model key with the prefix: no such line.
  const other = await UNet.load(e, flags, prefixed('model.')).then(() => null, (x: Error) => x);
  t.notMatch(other?.message, /DataParallel/, 'model.*');
  const extra = await UNet.load(e, flags, prefixed('module.', [...src.keys(), 'ema_decay'])).then(() => null, (x: Error) => x);
  t.match(extra?.message, `unexpected keys (${src.keys().length + 1}): module.`);
  t.notMatch(extra?.message, /DataParallel/, 'module.ema_decay besides');
});

t.test('weights whose recorded config builds another network are refused, even where every shape fits', async (t) => {
  const e = await testEngine();
  const src = withPrefix(reference, 'param.');
  const flags = flagsFromJson(reference.metadata.config);
  // Shapes alike, computation not: heads from num_heads instead of num_head_channels, the other attention order.
  for (const [change, message] of [
    [{ num_heads: 4, num_head_channels: -1 }, /"heads":4.* here, .*"heads":2.* recorded/],
    [{ use_new_attention_order: true }, /"legacy":false.* here, .*"legacy":true.* recorded/],
  ] as const) {
    const err = await UNet.load(e, { ...flags, ...change }, src).then(() => null, (x: Error) => x);
    t.ok(err instanceof CheckpointMismatchError, JSON.stringify(change));
    t.match(err?.message, /records the config it was saved with \(metadata "config"\), and it builds another U-Net than the one asked for — block \d+ \(\S+\)/);
    t.match(err?.message, message);
  }
  // The same network at another image size (attention at the same downsampling factors) loads.
  const doubled = await UNet.load(e, { ...flags, image_size: 2 * flags.image_size, attention_resolutions: String(flagsFromJson(reference.metadata.config).attention_resolutions).split(',').map((r) => 2 * Number(r)).join(',') }, src);
  t.equal(doubled.plan.blocks.length, planUNet(flags).blocks.length);
  for (const p of doubled.parameters().values()) p.dispose();
});

t.test('a recorded config is compared whatever else it holds, and one difrep cannot build is refused, never skipped', async (t) => {
  const e = await testEngine();
  const src = withPrefix(reference, 'param.');
  const flags = flagsFromJson(reference.metadata.config);
  const recording = (config: string) => ({ ...src, metadata: { ...src.metadata, config } });
  const load = (config: string, asked = flags) => UNet.load(e, asked, recording(config)).then((u) => {
    for (const p of u.parameters().values()) p.dispose();
    return null;
  }, (x: Error) => x);
  // A training script's other arguments saved beside the flags: left out of the comparison, which still runs.
  const extra = JSON.stringify({ ...flags, lr: 1e-4, batch_size: 64 });
  t.equal(await load(extra), null, 'the same network with lr and batch_size recorded: loads');
  const heads = await load(JSON.stringify({ ...flags, num_heads: 4, num_head_channels: -1, lr: 1e-4 }));
  t.match(heads?.message, /it builds another U-Net than the one asked for — block \d+ .*"heads":4.* recorded/, 'other heads, with lr recorded: refused');
  for (const [config, why] of [
    [JSON.stringify({ ...flags, noise_schedule: 'cosine' }), /difrep cannot build the U-Net it describes — U-Net config: noise_schedule "cosine" is not supported/],
    ['{image_size: 32}', /difrep cannot build the U-Net it describes — U-Net config: config is not valid JSON/],
  ] as const) {
    const err = await load(config);
    t.ok(err instanceof CheckpointMismatchError, config);
    t.match(err?.message, why);
  }
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

t.test('openCheckpoint tells formats by their full signatures: a safetensors header length of 0x..80 is not a pickle', async (t) => {
  // Our own writer, with metadata long enough that the header length's low byte is 0x80 (the
  // legacy torch pickle starts with 0x80 too, but then 02 8a 0a and the magic number).
  let bytes: Uint8Array | undefined;
  for (let n = 0; n < 64 && bytes?.[0] !== 0x80; n++) bytes = encodeSafetensors({ w: { shape: [2], data: Float32Array.from([1, 2]) } }, { steps: 'x'.repeat(n) });
  t.equal(bytes![0], 0x80, `header length ${bytes![0] | (bytes![1] << 8)}`);
  const src = await openCheckpoint(bytes!);
  t.same(Array.from(await src.read('w')), [1, 2]);
  await src.close();
  // Neither format: a pickle PROTO byte without the magic, and plain text.
  const dir = await mkdtemp(join(tmpdir(), 'difrep-ckpt-'));
  for (const [name, data] of [['proto.pt', Uint8Array.of(0x80, 0x02, 0x7d, 0x2e, 0, 0, 0, 0, 0, 0)], ['notes.txt', new TextEncoder().encode('not a checkpoint at all')]] as const) {
    const path = join(dir, name);
    await writeFile(path, data);
    const err = await openCheckpoint(path).then(() => null, (e: Error) => e);
    t.ok(err instanceof CheckpointError, `${name}: a CheckpointError`);
    t.match(err?.message, `${path}: not a checkpoint in an accepted format (it starts with ${Array.from(data.subarray(0, 16), (b) => b.toString(16).padStart(2, '0')).join(' ')})`);
    t.match(err?.message, /Accepted: safetensors .*, a PyTorch zip archive .* and the legacy PyTorch format .*80 02 .* 8a 0a 6c fc 9c 46 f9 20 6a a8 50 19/);
  }
  await rm(dir, { recursive: true });
  // The legacy magic after PROTO 2, or PROTO 4 and a FRAME (legacy torch.save with pickle_protocol=4).
  const magic = [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
  t.ok(isLegacyTorch(Uint8Array.of(0x80, 0x02, ...magic)));
  t.ok(isLegacyTorch(Uint8Array.of(0x80, 0x04, 0x95, 14, 0, 0, 0, 0, 0, 0, 0, ...magic)));
  t.notOk(isLegacyTorch(Uint8Array.of(0x80, 0x02, ...magic.slice(0, 11), 0x18)), 'one byte of the magic off');
  t.notOk(isLegacyTorch(Uint8Array.of(0x80, 0x07, ...magic)), 'no pickle protocol 7');
  // With pickle_protocol=1 the magic is a LONG in text, with no PROTO before it.
  t.ok(isLegacyTorch(new TextEncoder().encode('L119547037146038801333356L\n.')));
  t.notOk(isLegacyTorch(new TextEncoder().encode('L119547037146038801333357L\n.')), 'one digit off');
});

// torch.save(..., pickle_protocol=1) writes bools as INT ("I00\n") and, in the legacy format, the
// magic number as LONG text: both were refused ("unsupported pickle opcode 0x49", "not a checkpoint
// in an accepted format"), though torch.load reads them.
t.test('pickle protocol 1 checkpoints (zip and legacy) load the same tensors as the default protocol', async (t) => {
  const reference = await openCheckpoint(fixture('protocol2.pt'));
  t.teardown(() => reference.close());
  t.same(reference.info('1.num_batches_tracked'), { dtype: 'I64', shape: [] });
  t.same(Array.from(await reference.read('1.num_batches_tracked')), [1], 'one training-mode batch');
  for (const file of ['protocol1.pt', 'protocol1-legacy.pt']) {
    const pt = await openCheckpoint(fixture(file));
    t.same(pt.keys(), reference.keys(), `${file}: the same keys`);
    for (const k of reference.keys()) {
      t.same(pt.info(k), reference.info(k), `${file}: ${k}'s dtype and shape`);
      t.same(Array.from(await pt.read(k)), Array.from(await reference.read(k)), `${file}: ${k}'s values`);
    }
    await pt.close();
  }
});

t.test('BF16 widens to f32 exactly: signs, zeros, infinities, NaN, the largest and subnormal values', async (t) => {
  // bfloat16 bit patterns and their values, worked out by hand: sign, 8-bit exponent (bias 127), 7-bit fraction.
  const cases: [number, number][] = [
    [0x3f80, 1], [0xc060, -3.5], [0x3e20, 0.15625], [0x0000, 0], [0x8000, -0], [0x7f80, Infinity], [0xff80, -Infinity],
    [0x7fc0, NaN], [0x7f7f, 255 * 2 ** 120], [0xff7f, -255 * 2 ** 120], [0x0001, 2 ** -133], [0x8001, -(2 ** -133)], [0x0080, 2 ** -126],
  ];
  const header = new TextEncoder().encode(JSON.stringify({ w: { dtype: 'BF16', shape: [cases.length], data_offsets: [0, 2 * cases.length] } }));
  const bytes = new Uint8Array(8 + header.length + 2 * cases.length);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(header.length), true);
  bytes.set(header, 8);
  cases.forEach(([bits], i) => view.setUint16(8 + header.length + 2 * i, bits, true));
  const src = await openSafetensors(bytes);
  const got = await src.read('w');
  for (const [i, [bits, want]] of cases.entries()) t.ok(Object.is(got[i], want), `0x${bits.toString(16)} → ${got[i]}, expected ${want}`);
});

t.test('encodeSafetensors refuses a shape that disagrees with the data and a tensor named __metadata__', async (t) => {
  t.throws(() => encodeSafetensors({ ok: { shape: [2], data: new Float32Array(2) }, a: { shape: [3], data: new Float32Array(2) } }),
    new RangeError('tensor "a": shape [3] has 3 elements but its data holds 2'));
  t.throws(() => encodeSafetensors({ n: { shape: [2, 2], data: new BigInt64Array(5) } }), new RangeError('tensor "n": shape [2,2] has 4 elements but its data holds 5'));
  t.throws(() => encodeSafetensors({ __metadata__: { shape: [1], data: new Float32Array(1) } }, { k: 'v' }),
    new RangeError('a tensor cannot be named "__metadata__": safetensors reserves that key for the metadata'));
});

t.test('a checkpoint read from bytes in memory hands out copies: editing one changes no later read', async (t) => {
  const bytes = encodeSafetensors({ w: { shape: [2], data: Float32Array.from([1, 2]) } }, {});
  const src = await openCheckpoint(bytes);
  const w = await src.read('w');
  w[0] = 999;
  t.same(Array.from(await src.read('w')), [1, 2]);
  t.same(Array.from(await withPrefix(src, '').read('w')), [1, 2]);
  await src.close();
});

t.test('a path in a runtime without a file system (a browser) is a CheckpointError saying to pass the bytes', async (t) => {
  const { fileSource } = await import('../../src/model/checkpoint/byte-source.ts');
  const node = globalThis.process;
  let opened: Promise<unknown>;
  // A browser has neither process.versions.node nor Deno (it failed loading node:fs/promises, with a CORS error beside).
  (globalThis as { process?: unknown }).process = undefined;
  try {
    opened = fileSource('model.pt');
  } finally {
    (globalThis as { process?: unknown }).process = node;
  }
  await t.rejects(opened, /model\.pt: this runtime has no file system \(a browser\): fetch the file and pass its bytes \(a Uint8Array\) instead of a path/);
});
