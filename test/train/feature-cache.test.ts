// Feature caches that cannot lie: options checked before any work, one writer per shard (a lock),
// chunks checked (signature, shapes, index, labels, SHA-256) whenever they are read, and metadata
// that cannot make a loop run away.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { encodeSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { UNet } from '../../src/model/unet.ts';
import type { CacheSignature } from '../../src/train/cache-signature.ts';
import { checkExistingCache, type ExtractOptions, extractFeatures, extractionNoiseSeed, type ImageSource, openFeatureCache, planChunks, validateExtractOptions } from '../../src/train/extract.ts';
import { tensorChecksum, writeFeatureChunk } from '../../src/train/feature-chunk.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();
// 8×8 U-Net with 5 blocks; blocks 1 and 2 are 32 × 8 × 8 maps.
const flags = { image_size: 8, num_channels: 32, num_res_blocks: 1, channel_mult: '1', attention_resolutions: '', num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true };
const unet = UNet.random(e, flags, 1);
const LABELS = [3, 1, 4, 1, 5, 9];

/** 6 images whose pixels are (image + 1) / 10; counts how often images() is asked. */
function source(calls = { n: 0 }): ImageSource {
  return {
    count: LABELS.length,
    labels: LABELS,
    images: (sel) => {
      calls.n++;
      const out = new Float32Array(sel.length * 3 * 64);
      sel.forEach((img, i) => out.fill((img + 1) / 10, i * 192, (i + 1) * 192));
      return out;
    },
  };
}

const options = (outDir: string, more: Partial<ExtractOptions> = {}): ExtractOptions => ({
  outDir, timesteps: [5, 50], blocks: [1, 2], pool: 2, chunkSize: 4, batchSize: 4, seed: 7, provenance: { config: 'tiny', checkpoint: 'random-1', dataset: 'test' }, ...more,
});

const tempDir = () => mkdtemp(join(tmpdir(), 'difrep-cache-'));
const chunkFiles = async (dir: string) => (await readdir(dir)).filter((f) => f.startsWith('chunk-')).sort();

/** The safetensors header and where its data starts, read as the format spec says (u64 LE length, JSON). */
async function header(file: string): Promise<{ bytes: Uint8Array; json: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> & { __metadata__: Record<string, string> }; dataStart: number }> {
  const bytes = new Uint8Array(await readFile(file));
  const len = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
  return { bytes, json: JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + len))), dataStart: 8 + len };
}

async function flipBit(file: string, tensor: string, byte: number): Promise<void> {
  const h = await header(file);
  h.bytes[h.dataStart + h.json[tensor].data_offsets[0] + byte] ^= 0x10;
  await writeFile(file, h.bytes);
}

t.test('duplicate timesteps or blocks and bad sizes are refused before anything is written', async (t) => {
  const dir = await tempDir();
  t.throws(() => validateExtractOptions(options(dir, { timesteps: [150, 150] }), 6), /timesteps lists 150 twice/);
  t.throws(() => validateExtractOptions(options(dir, { blocks: [9, 9] }), 6), /blocks lists 9 twice/);
  t.throws(() => validateExtractOptions(options(dir, { timesteps: [] }), 6), /timesteps \[\] is not a non-empty list/);
  t.throws(() => validateExtractOptions(options(dir, { timesteps: [1000] }), 6), /timesteps: 1000 is not an integer in 0\.\.999/);
  t.throws(() => validateExtractOptions(options(dir, { chunkSize: 0 }), 6), /chunkSize 0 is not a positive integer/);
  t.throws(() => validateExtractOptions(options(dir, { shard: { index: 2, count: 2 } }), 6), /shard 2\/2 is out of range/);
  t.throws(() => validateExtractOptions(options(dir, { provenance: { count: '3' } }), 6), /provenance key "count" clashes/);
  const calls = { n: 0 };
  await t.rejects(extractFeatures(e, unet, source(calls), options(dir, { blocks: [2, 2] })), /blocks lists 2 twice/);
  await t.rejects(extractFeatures(e, unet, source(calls), options(dir, { blocks: [6] })), /block 6 does not exist: this U-Net has blocks 1\.\.5/);
  await t.rejects(extractFeatures(e, unet, { ...source(calls), labels: [3, 1, -1, 1, 5, 9] }, options(dir)), /label of image 2 is -1/);
  // Stored as I64 and read back through f32: 16,777,217 came back as 16,777,216, its checksum passing.
  await t.rejects(extractFeatures(e, unet, { ...source(calls), labels: [3, 1, 2 ** 24 + 1, 1, 5, 9] }, options(dir)), /label of image 2 is 16777217, not a class number in 0\.\.16777216/);
  t.equal(calls.n, 0, 'no image was asked for');
  t.same(await readdir(dir), [], 'nothing written');
  await rm(dir, { recursive: true });
});

t.test('an extraction reads back intact; every chunk carries a SHA-256 per tensor as documented', async (t) => {
  const dir = await tempDir();
  t.equal(await extractFeatures(e, unet, source(), options(dir)), 6);
  t.same(await chunkFiles(dir), ['chunk-00000000-00000004.safetensors', 'chunk-00000004-00000006.safetensors']);
  t.notOk((await readdir(dir)).some((f) => f.startsWith('.lock')), 'lock released');
  const cache = await openFeatureCache(dir);
  t.same(Array.from(cache.labels), LABELS);
  const f = await cache.features(50, 2);
  t.same(f.shape, [32, 2, 2]);
  t.equal(f.data.length, 6 * 128);
  // The stored checksum is SHA-256("F32 [2,32,2,2]\n" + the tensor's bytes), recomputed here from the file.
  const h = await header(join(dir, 'chunk-00000004-00000006.safetensors'));
  const [b0, b1] = h.json['t50.b2'].data_offsets;
  const want = createHash('sha256').update('F32 [2,32,2,2]\n').update(h.bytes.subarray(h.dataStart + b0, h.dataStart + b1)).digest('hex');
  t.equal(JSON.parse(h.json.__metadata__.sha256)['t50.b2'], want);
  t.same(Array.from(new Float32Array(h.bytes.slice(h.dataStart + b0, h.dataStart + b1).buffer)), Array.from(f.data.subarray(4 * 128)), 'the last chunk holds images 4 and 5');
  await rm(dir, { recursive: true });
});

// An Adam (pretraining in the same process) leaves the U-Net's parameters requiring gradients:
// every extraction batch's forward was then recorded on the tape, which kept all of it alive.
t.test('extraction records nothing on the tape, even from a U-Net whose parameters require gradients', async (t) => {
  const dir = await tempDir();
  const trained = UNet.random(e, flags, 1);
  for (const p of trained.parameters().values()) p.requiresGrad = true;
  const before = e.memoryStats().liveBytes;
  t.equal(await extractFeatures(e, trained, source(), options(dir)), 6);
  t.equal(e.tape.length, 0, 'no op left on the tape');
  t.equal(e.memoryStats().liveBytes, before, 'nothing kept alive');
  for (const p of trained.parameters().values()) p.dispose();
  await rm(dir, { recursive: true });
});

t.test('a bit flip in any tensor of a chunk is caught on open (as merge does) and on read', async (t) => {
  const dir = await tempDir();
  await extractFeatures(e, unet, source(), options(dir));
  const chunk = join(dir, 'chunk-00000000-00000004.safetensors');
  const clean = await readFile(chunk);
  const redo = /chunk-00000000-00000004\.safetensors: tensor "t5\.b1" does not match its checksum \(the file is corrupted\); delete .*chunk-00000000-00000004\.safetensors and rerun extract/;
  await flipBit(chunk, 't5.b1', 100);
  await t.rejects(openFeatureCache(dir), redo);
  const lazy = await openFeatureCache(dir, { verifyAll: false });
  await t.rejects(lazy.features(5, 1), redo, 'features() checks what it reads');
  t.ok(await lazy.features(50, 1), 'other feature maps still read');
  await writeFile(chunk, clean);
  await flipBit(chunk, 'labels', 0);
  await t.rejects(openFeatureCache(dir, { verifyAll: false }), /tensor "labels" does not match its checksum/);
  await writeFile(chunk, clean);
  await flipBit(chunk, 'index', 8);
  await t.rejects(openFeatureCache(dir, { verifyAll: false }), /tensor "index" does not match its checksum/);
  await writeFile(chunk, clean);
  t.ok(await openFeatureCache(dir), 'the restored chunk is accepted');
  await rm(dir, { recursive: true });
});

// Resume skipped every chunk whose header matched: a chunk with a flipped feature byte was kept,
// and extract then wrote a manifest calling the cache complete (merge refused it later).
t.test('a resumed extraction reads each chunk it would skip against its checksums, and extracts a corrupted one again', async (t) => {
  const dir = await tempDir();
  await extractFeatures(e, unet, source(), options(dir));
  const chunk = join(dir, 'chunk-00000004-00000006.safetensors');
  const clean = await readFile(chunk);
  await flipBit(chunk, 't50.b2', 40);
  const warnings: string[] = [];
  const calls = { n: 0 };
  t.equal(await extractFeatures(e, unet, source(calls), options(dir, { onWarning: (m) => warnings.push(m) })), 2, 'the 2 images of the corrupted chunk');
  t.equal(calls.n, 1, 'one batch decoded: the intact chunk was skipped');
  t.equal(warnings.length, 1);
  t.match(warnings[0], /chunk-00000004-00000006\.safetensors: tensor "t50\.b2" does not match its checksum \(the file is corrupted\): extracting that chunk again$/);
  t.same(await readFile(chunk), clean, 'the chunk is the one a clean run wrote');
  t.ok(await openFeatureCache(dir), 'and the cache verifies');
  await rm(dir, { recursive: true });
});

t.test('rerunning a complete cache with another chunk size (or seed, t, b, pool) is refused before any work', async (t) => {
  const dir = await tempDir();
  await extractFeatures(e, unet, source(), options(dir));
  const before = await readdir(dir);
  const calls = { n: 0 };
  await t.rejects(extractFeatures(e, unet, source(calls), options(dir, { chunkSize: 2 })), /already holds features from an extraction with other settings \(chunk-00000000-00000004\.safetensors: chunkSize \(4 → 2\)\); use another --out directory/);
  await t.rejects(extractFeatures(e, unet, source(calls), options(dir, { seed: 8, timesteps: [5] })), /timesteps \(\[5,50\] → \[5\]\), seed \(7 → 8\)/);
  await t.rejects(extractFeatures(e, unet, source(calls), options(dir, { provenance: { config: 'tiny', checkpoint: 'other', dataset: 'test' } })), /checkpoint \("random-1" → "other"\)/);
  t.equal(calls.n, 0, 'no image was decoded or run');
  t.same(await readdir(dir), before, 'the cache is untouched');
  // What the CLI calls before loading the model:
  await t.rejects(checkExistingCache(dir, validateExtractOptions(options(dir, { pool: 3 }), 6)), /pool \(2 → 3\)/);
  t.same(await checkExistingCache(dir, validateExtractOptions(options(dir), 6)), await chunkFiles(dir));
  t.same(await checkExistingCache(join(dir, 'new'), validateExtractOptions(options(dir), 6)), [], 'a new directory is fine');
  t.equal(await extractFeatures(e, unet, source(calls), options(dir)), 0, 'the same settings resume (nothing left to do)');
  await rm(dir, { recursive: true });
});

t.test('one extraction per shard of a directory at a time; the lock is released on failure; stale locks are taken over', async (t) => {
  const dir = await tempDir();
  let started!: () => void;
  const inFirst = new Promise<void>((r) => (started = r));
  let fail!: (err: Error) => void;
  const blocked: ImageSource = { ...source(), images: () => (started(), new Promise((_, reject) => (fail = reject))) };
  const first = extractFeatures(e, unet, blocked, options(dir));
  await inFirst; // the first run holds the lock and waits for its images
  await t.rejects(extractFeatures(e, unet, source(), options(dir)), new RegExp(`is being extracted into by process ${process.pid} on ${hostname()}`));
  // Another shard of the same directory is not blocked (shards may run on other machines).
  let otherStarted!: () => void;
  const inOther = new Promise<void>((r) => (otherStarted = r));
  let failOther!: (err: Error) => void;
  const other = extractFeatures(e, unet, { ...source(), images: () => (otherStarted(), new Promise((_, reject) => (failOther = reject))) }, options(dir, { shard: { index: 1, count: 2 } }));
  await inOther;
  t.same((await readdir(dir)).filter((f) => f.startsWith('.lock')).sort(), ['.lock-shard-0-of-1', '.lock-shard-1-of-2']);
  // Both rejections are awaited from before they happen (else one settles unhandled while the other is awaited).
  const rejected = [t.rejects(first, /decoder gone/), t.rejects(other, /decoder gone too/)];
  fail(new Error('decoder gone'));
  failOther(new Error('decoder gone too'));
  await Promise.all(rejected);
  t.same(await readdir(dir), [], 'both locks released after the failures');

  // A lock left by a process that died on this host is taken over, with a warning.
  const dead = spawnSync(process.execPath, ['-e', '']).pid!;
  await writeFile(join(dir, '.lock-shard-0-of-1'), JSON.stringify({ pid: dead, hostname: hostname(), started: '2020-01-01T00:00:00Z' }));
  const warnings: string[] = [];
  t.equal(await extractFeatures(e, unet, source(), options(dir, { onWarning: (m) => warnings.push(m) })), 6);
  t.equal(warnings.length, 1);
  t.match(warnings[0], new RegExp(`took over the stale lock .*\\.lock-shard-0-of-1 of process ${dead} on ${hostname()}`));
  t.notOk((await readdir(dir)).some((f) => f.startsWith('.lock')));
  // A restarted container gives the new process the pid of the one that died holding the lock
  // (here: this process's pid, in a lock taken before it started): taken over too.
  await writeFile(join(dir, '.lock-shard-0-of-1'), JSON.stringify({ pid: process.pid, hostname: hostname(), started: new Date(performance.timeOrigin - 60_000).toISOString() }));
  t.equal(await extractFeatures(e, unet, source(), options(dir, { onWarning: (m) => warnings.push(m) })), 0);
  t.match(warnings[1], new RegExp(`took over the stale lock .* of process ${process.pid} on ${hostname()}`));
  const now = new Date().toISOString();
  // A live process's lock, another host's lock and an unreadable lock are refused.
  await writeFile(join(dir, '.lock-shard-0-of-1'), JSON.stringify({ pid: process.pid, hostname: hostname(), started: now }));
  await t.rejects(extractFeatures(e, unet, source(), options(dir)), new RegExp(`process ${process.pid} .*wait for it to finish or use another --out directory`));
  // Where the runtime cannot check a pid (Deno without --allow-run: process.kill throws with no code), refused too.
  const dead2 = spawnSync(process.execPath, ['-e', '']).pid!;
  await writeFile(join(dir, '.lock-shard-0-of-1'), JSON.stringify({ pid: dead2, hostname: hostname(), started: now }));
  const kill = process.kill;
  process.kill = () => {
    throw new Error('Requires run access to "kill"');
  };
  try {
    await t.rejects(extractFeatures(e, unet, source(), options(dir)), new RegExp(`locked by process ${dead2} .*cannot tell whether it still runs \\(under Deno, allow it with --allow-run\\)`));
  } finally {
    process.kill = kill;
  }
  await writeFile(join(dir, '.lock-shard-0-of-1'), JSON.stringify({ pid: 1234, hostname: 'node-17', started: now }));
  await t.rejects(extractFeatures(e, unet, source(), options(dir)), /process 1234 on node-17 .*if that process is gone, delete .*\.lock-shard-0-of-1/);
  await writeFile(join(dir, '.lock-shard-0-of-1'), '');
  await t.rejects(extractFeatures(e, unet, source(), options(dir)), /unreadable lock file/);
  await rm(dir, { recursive: true });
});

t.test('non-finite features or inputs are never written', async (t) => {
  const dir = await tempDir();
  const params = new Map(unet.parameters());
  const bias = params.get('input_blocks.0.0.bias')!;
  const poisoned = new Float32Array(bias.shape[0]);
  poisoned[3] = NaN;
  params.set('input_blocks.0.0.bias', e.keep(e.tensor(poisoned, bias.shape, 'poisoned bias')));
  await t.rejects(extractFeatures(e, unet.withWeights(params), source(), options(dir)), /produced NaN in the features at t=5, b=1 of image 0; the model \(check the checkpoint for NaN or Inf weights\) or that input is at fault/);
  const nanInput: ImageSource = { ...source(), images: (sel) => Float32Array.from({ length: sel.length * 192 }, (_, i) => (sel[Math.floor(i / 192)] === 1 && i % 192 === 7 ? Infinity : 0)) };
  await t.rejects(extractFeatures(e, unet, nanInput, options(dir)), /input image 1 holds Infinity; the image source is at fault/);
  t.same(await chunkFiles(dir), [], 'no chunk written');
  await rm(dir, { recursive: true });
});

/** A one-chunk cache of 4 images with one 2-value feature map, written by the chunk writer. */
async function smallCache(sig: CacheSignature, labels = [0, 1, 2, 3]): Promise<string> {
  const dir = await tempDir();
  const plan = { start: 0, end: 4, file: 'chunk-00000000-00000004.safetensors' };
  await writeFeatureChunk(join(dir, plan.file), sig, plan, new Map([['t5.b1', { shape: [2], data: Float32Array.from({ length: 8 }, (_, i) => i) }]]), labels);
  return dir;
}
const sig4: CacheSignature = { timesteps: [5], blocks: [1], pool: null, seed: 0, count: 4, chunkSize: 4 };

t.test('metadata is checked before it is used: chunk size 0, huge counts, bad lists end in an error, not a loop', async (t) => {
  t.ok(await openFeatureCache(await smallCache(sig4)), 'the well-formed cache opens');
  for (const [change, message] of [
    [{ chunkSize: 0 }, /chunk size 0 is not an integer in 1\.\./],
    [{ chunkSize: 0.5 }, /chunk size 0\.5 is not an integer/],
    [{ count: 1e12 }, /image count 1000000000000 is not an integer in 1\.\.16777216/],
    // An index above 2^24 does not survive its float32 read (the chunk of image 16,777,217 read as corrupt).
    [{ count: 2 ** 24 + 1 }, /image count 16777217 is not an integer in 1\.\.16777216 \(a cache holds at most 2\^24 images: extract a larger dataset into several caches\)/],
    [{ count: 2 ** 24, chunkSize: 1 }, /would be more than 10000000 chunks/],
    [{ timesteps: 'abc' }, /timesteps "abc" is not a non-empty list/],
    [{ blocks: [1, 1] }, /blocks lists 1 twice/],
    [{ pool: -2 }, /pool -2 is neither null nor a positive integer/],
    [{ seed: 2 ** 32 + 5 }, /seed 4294967301 is not an integer in 0\.\.4294967295 \(the noise generator's seeds are 32-bit\)/],
  ] as const) {
    const dir = await smallCache({ ...sig4, ...change } as unknown as CacheSignature);
    await t.rejects(openFeatureCache(dir), message, JSON.stringify(change));
    await rm(dir, { recursive: true });
  }
  t.throws(() => planChunks(10, 0), /cannot plan chunks of 0 for 10 images/);
});

t.test('chunks whose header disagrees with their bytes, labels out of range or a wrong index are refused', async (t) => {
  const plan = { start: 0, end: 4, file: 'chunk-00000000-00000004.safetensors' };
  // `patch`: one text replaced in the encoded header (same length), for a header our writer refuses to write.
  const craft = async (tensors: Record<string, { shape: number[]; data: Float32Array | BigInt64Array }>, patch?: [string, string]) => {
    const dir = await tempDir();
    const sums: Record<string, string> = {};
    for (const [k, v] of Object.entries(tensors)) sums[k] = tensorChecksum(v.data instanceof BigInt64Array ? 'I64' : 'F32', v.shape, Float32Array.from(v.data, Number));
    const bytes = encodeSafetensors(tensors, { signature: JSON.stringify(sig4), start: '0', end: '4', sha256: JSON.stringify(sums) });
    if (patch) {
      const text = new TextDecoder().decode(bytes);
      if (patch[0].length !== patch[1].length || !text.includes(patch[0])) throw new Error(`cannot patch ${patch[0]}`);
      bytes.set(new TextEncoder().encode(text.replace(patch[0], patch[1])).subarray(0, bytes.length));
    }
    await writeFile(join(dir, plan.file), bytes);
    return dir;
  };
  const i64 = (v: number[]) => ({ shape: [v.length], data: BigInt64Array.from(v, BigInt) });
  const good = { 't5.b1': { shape: [4, 2], data: new Float32Array(8) }, labels: i64([0, 1, 2, 3]), index: i64([0, 1, 2, 3]) };
  t.ok(await openFeatureCache(await craft(good)), 'the hand-made chunk opens');
  // What `--t 150,150` used to write: a header for 4 images over the bytes of 8.
  const wide = await craft({ ...good, 't5.b1': { shape: [8, 2], data: new Float32Array(16) } }, ['"shape":[8,2]', '"shape":[4,2]']);
  await t.rejects(openFeatureCache(wide), /tensor "t5\.b1" data_offsets \[64,128\] hold 64 bytes, but F32 \[4,2\] needs 32/, 'header shape vs bytes');
  await rm(wide, { recursive: true });
  const cases: [string, Record<string, { shape: number[]; data: Float32Array | BigInt64Array }>, RegExp][] = [
    ['images in the feature map', { ...good, 't5.b1': { shape: [2, 4], data: new Float32Array(8) } }, /tensor "t5\.b1" has shape \[2,4\], expected \[4, \.\.\.\] for 4 images/],
    ['labels out of range', { ...good, labels: i64([0, 1, -5, 3]) }, /label of image 2 is -5, not a class number/],
    ['index not start..end', { ...good, index: i64([0, 1, 3, 2]) }, /index\[2\] is 3, expected 2/],
    ['missing feature map', { labels: good.labels, index: good.index }, /tensor "t5\.b1" is missing/],
    ['extra tensor', { ...good, 't6.b1': good['t5.b1'] }, /unexpected tensors t6\.b1/],
  ];
  for (const [name, tensors, message] of cases) {
    const dir = await craft(tensors);
    await t.rejects(openFeatureCache(dir), message, name);
    await rm(dir, { recursive: true });
  }
  const nan = await craft({ ...good, 't5.b1': { shape: [4, 2], data: Float32Array.of(0, 0, 0, NaN, 0, 0, 0, 0) } });
  await t.rejects(openFeatureCache(nan), /tensor "t5\.b1" holds NaN at element 3/);
  await rm(nan, { recursive: true });
});

t.test('a directory mixing extractions, or missing chunks, is not called complete', async (t) => {
  const dir = await smallCache({ ...sig4, count: 8 });
  await t.rejects(openFeatureCache(dir), /is incomplete: 1 of 2 chunks missing \(first: chunk-00000004-00000008\.safetensors\)/);
  const other = await smallCache({ ...sig4, seed: 3 });
  await mkdir(join(other, 'x'));
  await writeFeatureChunk(join(other, 'chunk-00000000-00000002.safetensors'), { ...sig4, chunkSize: 2 }, { start: 0, end: 2, file: '' }, new Map([['t5.b1', { shape: [2], data: new Float32Array(4) }]]), [0, 1]);
  await t.rejects(openFeatureCache(other), /chunk-00000000-00000004\.safetensors comes from an extraction with other settings than chunk-00000000-00000002\.safetensors \(seed \(3 → 0\), chunkSize \(4 → 2\)\)/);
  await t.rejects(openFeatureCache(join(other, 'gone')), /does not exist/);
  await t.rejects(openFeatureCache(join(other, 'x')), /holds no feature chunks/);
  await rm(dir, { recursive: true });
  await rm(other, { recursive: true });
});

t.test('two datasets extracted with one seed get independent noise; the same dataset the same noise', async (t) => {
  const run = async (dataset: string) => {
    const dir = await tempDir();
    await extractFeatures(e, unet, source(), options(dir, { provenance: { config: 'tiny', checkpoint: 'random-1', dataset } }));
    const f = await (await openFeatureCache(dir)).features(50, 2);
    await rm(dir, { recursive: true });
    return Array.from(f.data);
  };
  const train = await run('fashion-mnist/train');
  t.same(await run('fashion-mnist/train'), train, 'the same dataset and seed: the same features');
  // The same images under another dataset name: only the noise differs, and it must.
  const test = await run('fashion-mnist/test');
  t.ok(train.some((v, i) => v !== test[i]), 'train image i and test image i do not share ε');
  t.equal(extractionNoiseSeed(7, undefined), 7, 'no dataset: the seed itself');
});

t.test('a cache whose chunks were noised by an earlier rule (seed alone; seed and image XORed unmixed) is not resumed into', async (t) => {
  const plan = { file: 'chunk-00000000-00000004.safetensors' };
  const { noise: _, ...before } = validateExtractOptions(options(await tempDir()), 6);
  for (const [rule, shown] of [[undefined, 'unset'], ['seed ⊕ FNV-1a(dataset)', '"seed ⊕ FNV-1a\\(dataset\\)"']] as const) {
    const dir = await tempDir();
    const signature = JSON.stringify(rule === undefined ? before : { ...before, noise: rule });
    await writeFile(join(dir, plan.file), encodeSafetensors({ labels: { shape: [4], data: new Float32Array(4) } }, { signature, start: '0', end: '4', sha256: '{}' }));
    await t.rejects(extractFeatures(e, unet, source(), options(dir)), new RegExp(`already holds features from an extraction with other settings \\(chunk-00000000-00000004\\.safetensors: noise \\(${shown} → "mixed\\(seed ⊕ FNV-1a\\(dataset\\)\\), image\\.\\.\\.\\)`));
    await rm(dir, { recursive: true });
  }
});

t.test('opening a cache leaves it as it was: the manifest is written once, not at every read', async (t) => {
  const dir = await tempDir();
  await extractFeatures(e, unet, source(), options(dir));
  await openFeatureCache(dir);
  const first = await stat(join(dir, 'manifest.json'));
  await openFeatureCache(dir);
  const again = await stat(join(dir, 'manifest.json'));
  t.same([again.ino, again.mtimeMs], [first.ino, first.mtimeMs], 'not replaced');
  await rm(dir, { recursive: true });
});

t.test('--pool only shrinks: a map smaller than the pool is stored as it is, not enlarged', async (t) => {
  const dir = await tempDir();
  await extractFeatures(e, unet, source(), options(dir, { pool: 16 }));
  const f = await (await openFeatureCache(dir)).features(50, 2);
  t.same(f.shape, [32, 8, 8], 'the 8×8 map of block 2, not 16×16 of repeated values');
  await rm(dir, { recursive: true });
});

t.test('a batch whose taps exceed a storage binding is extracted in fewer images at a time, not refused after its U-Net work', async (t) => {
  // At 16×16 each tap is 32 × 16 × 16 floats (32 KiB) an image; an 80 KiB binding holds the largest
  // weight (a decoder conv's, 72 KiB) and two images' taps: a batch of 6 is three calls of 2 images (it
  // failed: the pool bound the rejoined 192 KiB tap).
  const { createEngine } = await import('../../src/engine/engine.ts');
  const small = await createEngine({ maxBindingBytes: 80 * 1024 });
  const flags16 = { ...flags, image_size: 16 };
  const images: ImageSource = { count: 6, labels: LABELS, images: (sel) => Float32Array.from({ length: sel.length * 768 }, (_, i) => Math.sin(sel[Math.floor(i / 768)] + i)) };
  const [a, b] = [await tempDir(), await tempDir()];
  const one = (engine: typeof e, dir: string) => extractFeatures(engine, UNet.random(engine, flags16, 1), images, options(dir, { pool: 4, chunkSize: 6, batchSize: 6 }));
  t.equal(await one(e, a), 6);
  t.equal(await one(small, b), 6);
  const [whole, split] = [await openFeatureCache(a), await openFeatureCache(b)];
  for (const [time, block] of [[5, 1], [50, 2]]) {
    const [x, y] = [(await whole.features(time, block)).data, (await split.features(time, block)).data];
    const scale = x.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    const err = x.reduce((m, v, i) => Math.max(m, Math.abs(v - y[i])), 0) / scale;
    t.ok(err < 1e-5, `t ${time}, b ${block}: the same features (max relative difference ${err.toExponential(1)})`);
  }
  small.dispose();
  await rm(a, { recursive: true });
  await rm(b, { recursive: true });
});

t.test('readers write nothing into a cache: one never merged (on read-only storage, say) stays without a manifest', async (t) => {
  const dir = await tempDir();
  await extractFeatures(e, unet, source(), options(dir));
  const { loadCachedFeatures } = await import('../../src/train/cached-features.ts');
  await loadCachedFeatures(dir, [5], [1]);
  t.notOk((await readdir(dir)).includes('manifest.json'), 'train, knn, sweep, eval: no manifest written');
  await openFeatureCache(dir);
  t.ok((await readdir(dir)).includes('manifest.json'), 'merge writes it');
  await rm(dir, { recursive: true });
});
