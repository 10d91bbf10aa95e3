// The paper in miniature (`difrep demo`): samples from a small U-Net and an honest look at them,
// then every head trained and evaluated on its features of a Fashion-MNIST subset — raw-pixel
// linear probe, GD linear probe (b, t chosen on a validation split), Attention head, DifFormer and
// DifFeed — one recipe for all, every setting recorded; the ordering is reported as found.
import * as fsp from 'node:fs/promises';
import { mkdir, rm } from 'node:fs/promises';
import { totalmem } from 'node:os';
import { join } from 'node:path';
import type { Engine } from '../engine/engine.ts';
import { slice } from '../engine/ops/layout.ts';
import { mulberry32 } from '../engine/random.ts';
import { paperBlocks } from '../model/block-roles.ts';
import { AttentionHead } from '../model/heads/attention-head.ts';
import { DifFeed } from '../model/heads/difeed.ts';
import { gaussianNoise, linearSchedule } from '../model/diffusion.ts';
import { sample } from '../model/sampling.ts';
import type { UNet } from '../model/unet.ts';
import { loadCachedFeatures } from './cached-features.ts';
import { balancedSubset, type GreyImages, imageSource, loadFashionMnist, seededShuffle, toModelInput } from './data/fashion-mnist.ts';
import { checkExistingCache, type ExtractOptions, extractFeatures, extractionNoiseSeed, featureKey, PIXEL_BLOCK, validateExtractOptions } from './extract.ts';
import { type FeatureArrays, fitHead, type FitOptions, type FitResult } from './fit.ts';
import { fitDifFeed } from './fit-difeed.ts';
import { fmtPercent } from './format-percent.ts';
import { fmtTime } from './format-time.ts';
import { probeInputs, type SweepRow, sweepLinearProbes } from './sweep.ts';
import { writeImageGridPng } from './sample-grid.ts';

/** Of `trainImages`, how many the validation sweeps fit their probes on (the other 20 % score them). */
export function sweepFitCount(trainImages: number): number {
  return trainImages - Math.round(0.2 * trainImages);
}

export interface MiniatureOptions {
  /** Samples, feature caches. */
  outDir: string;
  /** The weights' hash, recorded in the feature caches. */
  checkpointHash: string;
  trainPerClass: number;
  testPerClass: number;
  /** All 60,000 training and 10,000 test images. */
  full: boolean;
  epochs: number;
  /** Epochs of each probe of the validation sweeps (they rank settings; the chosen probe then trains for `epochs`). */
  sweepEpochs: number;
  stepSize: number;
  batchSize: number;
  difeedEpochs: number;
  /** DifFeed's StepLR period (its learning rates drop ×0.1 every this many epochs). */
  difeedStepSize: number;
  headDim: number;
  headLayers: number;
  headLr: number;
  prePool: number;
  seed: number;
  /** A progress reporter per stage (label, unit) → (done, total). */
  progress: (label: string, unit: string) => (done: number, total: number) => void;
}

export interface MiniatureRow {
  method: string;
  features: string;
  top1: number;
  /** Binomial standard error of top-1 over the test images, sqrt(p(1 − p) / n). */
  top1StdErr: number;
  /**
   * Standard error of this top-1 minus the raw-pixel probe's, paired over the same test images:
   * sqrt(var(hit − hit_raw) / n) (0 for the raw-pixel row itself).
   */
  vsRawStdErr: number;
  top5: number;
  params: number;
  seconds: number;
  settings: string;
  /** Everything the head was trained with, as its training run records it (optimizer, learning rates, schedule, seed…). */
  recipe: Record<string, unknown>;
  /** The mean training loss of each epoch: the curve that shows whether the head has converged. */
  losses: number[];
}

/** One point of a linear-probe validation sweep: its settings and validation top-1. */
export type SweepPoint = Omit<SweepRow, 'top1' | 'top5'> & { val: number };

/** The grid the linear probes are chosen from (on validation), and the timesteps the attention heads read. */
export const SWEEP_TIMESTEPS = [10, 50, 90, 150, 300];
export const SWEEP_POOLS = [1, 2, 4];
const HEAD_TIMESTEPS = [90, 150, 300];

export interface MiniatureResult {
  samples: string;
  data: { train: number; validation: number; test: number; full: boolean; seed: number };
  /** Per split: what was extracted, how many images this run extracted (the rest read from a cache), and this run's seconds. */
  extraction: Record<'train' | 'test', { timesteps: number[]; blocks: number[]; imagesExtracted: number; seconds: number }>;
  schedule: Record<string, unknown>;
  sweep: SweepPoint[];
  pixelSweep: SweepPoint[];
  rows: MiniatureRow[];
  findings: string[];
}

/** The demo's attention heads (Attention, DifFormer, DifFeed's): 4 heads, the rest from its options. */
const miniatureHead = (o: Pick<MiniatureOptions, 'headDim' | 'headLayers' | 'prePool'>) => ({ dim: o.headDim, heads: 4, layers: o.headLayers, prePoolSize: o.prePool });

/**
 * Throws the RangeError the Attention, DifFormer or DifFeed head (`headDim`, `headLayers`,
 * `prePool`) would throw for its size: found by the heads, it came after minutes of sampling,
 * extraction and sweeps.
 */
export function checkMiniatureHeads(e: Engine, unet: UNet, o: Pick<MiniatureOptions, 'headDim' | 'headLayers' | 'prePool'>): void {
  const roles = paperBlocks(unet.plan);
  const head = miniatureHead(o);
  const blocks = (bs: number[]) => bs.map((b) => ({ b, channels: unet.plan.blocks[b - 1].outChannels, size: unet.plan.blocks[b - 1].size }));
  AttentionHead.checkSize(e, { ...head, blocks: blocks([roles.feature]), timesteps: [150], classes: 10 });
  AttentionHead.checkSize(e, { ...head, blocks: blocks(roles.difformer), timesteps: HEAD_TIMESTEPS, classes: 10 });
  AttentionHead.checkSize(e, DifFeed.headOptions(unet, { classes: 10, strategy: 'bottleneck', t: 150, head }));
}

/** Runs every stage, logging a line per finding; returns what the demo records. */
export async function runMiniature(e: Engine, unet: UNet, o: MiniatureOptions, log: (line: string) => void): Promise<MiniatureResult> {
  const outDir = o.outDir;
  const seed = o.seed;
  checkMiniatureHeads(e, unet, o);
  await mkdir(outDir, { recursive: true });
  const S = unet.plan.flags.image_size;
  const roles = paperBlocks(unet.plan);
  const train = await loadFashionMnist('train');
  const test = await loadFashionMnist('test');
  // An earlier run's training cache is reused or replaced: its room counts. A test cache's name
  // holds the sweep's choice, not made yet, so an earlier one may stay beside the new one.
  const earlierTrainCache = await bytesUnder(featureCacheDir(outDir, 'train', SWEEP_TIMESTEPS, unet.plan.blocks.map((_, i) => i + 1)));
  checkRoom(unet, o.full ? train.count : 10 * o.trainPerClass, o.full ? test.count : 10 * o.testPerClass, outDir, await freeBytesUnder(outDir), earlierTrainCache);
  const sampleLine = await samplesAndSanity(e, unet, train, outDir, log);
  // Each phase's freed buffers go back to the device, so the run holds its largest phase's memory, not their sum.
  e.releasePooled();

  // Data: balanced subsets; the b, t sweep is chosen on a validation split of the training subset.
  const full = o.full;
  const trainIdx = full ? Array.from({ length: train.count }, (_, i) => i) : balancedSubset(train.labels, o.trainPerClass, seed);
  const testIdx = full ? Array.from({ length: test.count }, (_, i) => i) : balancedSubset(test.labels, o.testPerClass, seed + 1);
  const order = seededShuffle(trainIdx.map((_, i) => i), seed + 2);
  const valRows = order.slice(0, order.length - sweepFitCount(order.length));
  const fitRows = order.slice(valRows.length);
  log(`data: Fashion-MNIST, ${trainIdx.length} training images (${fitRows.length} fit + ${valRows.length} validation for the sweep), ${testIdx.length} test images, ${S}×${S} grey`);

  const epochs = o.epochs;
  const schedule = { epochs, stepSize: o.stepSize, batchSize: o.batchSize };
  const attention = miniatureHead(o);
  const rows: MiniatureRow[] = [];
  /** Binomial standard error of a top-1 over the test images. */
  const testStdErr = (top1: number) => Math.sqrt((top1 * (1 - top1)) / testIdx.length);
  let rawHits: Uint8Array | undefined;
  const hitsOf = new Map<string, Uint8Array>();
  const record = (method: string, features: string, r: FitResult, settings: string) => {
    const top1StdErr = testStdErr(r.top1);
    rawHits ??= r.testHits; // the raw-pixel probe is recorded first
    hitsOf.set(method, r.testHits);
    rows.push({ method, features, top1: r.top1, top1StdErr, vsRawStdErr: pairedStdErr(r.testHits, rawHits), top5: r.top5, params: r.params, seconds: r.seconds, settings, recipe: r.settings, losses: r.losses });
    log(`  ${method}: top-1 ${fmtPercent(r.top1)}% ± ${fmtPercent(top1StdErr)}, top-5 ${fmtPercent(r.top5)}%, ${r.params.toLocaleString('en')} parameters, ${fmtTime(r.seconds)}; training loss by epoch ${r.losses.map((l) => l.toFixed(3)).join(' ')}`);
  };
  const headLr = o.headLr;
  const fit = (trainSet: FeatureArrays, testSet: FeatureArrays, opts: Omit<FitOptions, 'classes'>, name?: string) => {
    const bar = name ? o.progress(name, 'batches') : undefined;
    let epoch = 0;
    return fitHead(e, trainSet, testSet, { classes: 10, seed, ...schedule, ...opts, onEpoch: (i) => (epoch = i.epoch + 1), onBatch: bar && ((d, n) => bar(epoch * n + d, schedule.epochs * n)) });
  };
  // The linear probe on one (t, b), pooled and optionally standardised as in the sweep.
  const linearProbe = (trainSet: FeatureArrays, testSet: FeatureArrays, p: SweepPoint) => {
    const split = probeInputs(trainSet, testSet, featureKey(p.t, p.b), p.pool, p.standardize);
    if (split.warning) log(`  ${split.warning}`);
    // Recorded in the row's recipe (settings.data), as train records it in result.json.
    return fit(split.train, split.test, { head: 'linear', timesteps: [p.t], blocks: [p.b], pool: p.pool, data: { standardize: p.standardize, chosenOn: 'validation' } });
  };
  // Every grid point trained on the fit part and scored on the validation part of the training
  // subset; ties go to the lowest t, then block, pool, and standardisation off before on.
  const sweepOn = async (set: FeatureArrays, grid: { timesteps: number[]; blocks: number[]; pools: number[] }, label: string) => {
    const bar = o.progress(label, 'probes');
    const total = grid.timesteps.length * grid.blocks.length * grid.pools.length * 2;
    let done = 0;
    const ts = performance.now();
    const rows = await sweepLinearProbes(e, subsetArrays(set, fitRows), subsetArrays(set, valRows), {
      ...grid, standardize: [false, true], classes: 10, epochs: o.sweepEpochs, batchSize: o.batchSize, lr: 1e-3, stepSize: o.stepSize, seed, onRow: () => bar(++done, total), onWarning: (w) => log(`  ${label}: ${w}`),
    });
    const points: SweepPoint[] = rows.map(({ top1, top5: _, ...p }) => ({ ...p, val: top1 }));
    const ordered = [...points].sort((x, y) => x.t - y.t || x.b - y.b || x.pool - y.pool || Number(x.standardize) - Number(y.standardize));
    return { points: ordered, best: ordered.reduce((x, y) => (y.val > x.val ? y : x)), seconds: (performance.now() - ts) / 1000 };
  };
  const describe = (p: SweepPoint) => `pool ${p.pool}×${p.pool}, ${p.standardize ? 'standardised' : 'raw scale'}`;

  // Training features: the whole sweep grid (every block × every sweep timestep), which holds the heads' too.
  const allBlocks = unet.plan.blocks.map((_, i) => i + 1);
  const headBlocks = [...new Set([...roles.difformer, roles.feature])].sort((a, b) => a - b);
  const tx = performance.now();
  // The splits' names seed their noise apart (extractionNoiseSeed): no test image shares a training image's ε.
  const datasetOf = (split: 'train' | 'test') => `fashion-mnist/${split}`;
  const extract = async (split: 'train' | 'test', ds: GreyImages, idx: number[], timesteps: number[], blocks: number[]) => {
    const dir = featureCacheDir(outDir, split, timesteps, blocks);
    const options: ExtractOptions = { outDir: dir, timesteps, blocks, batchSize: 100, chunkSize: 250, seed, provenance: { config: JSON.stringify(unet.plan.flags), checkpoint: o.checkpointHash, dataset: datasetOf(split), subset: JSON.stringify(idx.slice(0, 8)) + idx.length }, onProgress: o.progress(`extract ${split}`, 'images') };
    // The demo's caches are its own: one written with other settings (another checkpoint, config or
    // seed) is replaced, not refused. The config counts: weights that record none (a .pt) load into
    // any config of the same shapes (other heads), whose features a cache of the first would pass off.
    try {
      await checkExistingCache(dir, validateExtractOptions(options, idx.length));
    } catch (err) {
      log(`replacing ${dir}: ${(err as Error).message.split(' (')[0].replace(`${dir} `, '')}`);
      await rm(dir, { recursive: true, force: true });
    }
    // What this run extracted (0: every chunk was in the cache already, so its time is a read's, not an extraction's).
    const written = await extractFeatures(e, unet, imageSource(ds, idx, S), options);
    e.releasePooled();
    return { features: await loadCachedFeatures(dir, timesteps, blocks), extracted: written };
  };
  const trainExtraction = await extract('train', train, trainIdx, SWEEP_TIMESTEPS, allBlocks);
  const trainFeatures = trainExtraction.features;
  const trainSeconds = (performance.now() - tx) / 1000;
  const trainPart = `${SWEEP_TIMESTEPS.length} timesteps × all ${allBlocks.length} blocks for ${trainIdx.length} images`;
  log(trainExtraction.extracted
    ? `extraction (training subset): ${trainPart} in ${fmtTime(trainSeconds)} (${((1000 * trainSeconds) / (trainExtraction.extracted * SWEEP_TIMESTEPS.length)).toFixed(0)} ms per image and timestep)`
    : `training features (${trainPart}) read from the cache of an earlier run in ${fmtTime(trainSeconds)}`);
  log(`sweeps: each probe ${o.sweepEpochs} epochs on ${fitRows.length} images, scored on the ${valRows.length} validation images; the chosen one retrained as below`);
  log(`heads: Adam, cross-entropy, ${epochs} epochs, StepLR(${schedule.stepSize}, 0.1), batch ${schedule.batchSize}; lr 1e-3 linear and feedback, ${headLr} attention heads (d = ${attention.dim}, ${attention.layers} layer(s), 4 heads, tokens pooled to ≤ ${attention.prePoolSize}×${attention.prePoolSize})`);

  // Raw pixels get the same choices (pool, standardisation) and their full resolution besides.
  const pixelsTrain = rawPixels(train, trainIdx, S);
  const pixelSweep = await sweepOn(pixelsTrain, { timesteps: [0], blocks: [PIXEL_BLOCK], pools: [...SWEEP_POOLS, S] }, 'pixel sweep');
  log(`  pixel sweep (validation top-1): ${pixelSweep.points.map((p) => `${describe(p)} ${fmtPercent(p.val)}%`).join(', ')} → ${describe(pixelSweep.best)} (${fmtTime(pixelSweep.seconds)})`);
  const raw = await linearProbe(pixelsTrain, rawPixels(test, testIdx, S), pixelSweep.best);
  record('raw-pixel linear probe', `${S}×${S} pixels, ${describe(pixelSweep.best)}`, raw, `chosen on validation from pool ∈ {${[...SWEEP_POOLS, S]}} × standardisation off/on`);

  // GD linear probe: b, t, pool and standardisation by validation accuracy, then trained on all of the training subset.
  const sweep = await sweepOn(trainFeatures, { timesteps: SWEEP_TIMESTEPS, blocks: allBlocks, pools: SWEEP_POOLS }, 'GD sweep');
  const best = sweep.best;
  const top = [...sweep.points].sort((x, y) => y.val - x.val).slice(0, 5);
  log(`  GD sweep: ${sweep.points.length} probes in ${fmtTime(sweep.seconds)}; best on validation: ${top.map((p) => `b${p.b} t${p.t} ${describe(p)} ${fmtPercent(p.val)}%`).join('; ')}`);

  // Test features: the heads' blocks and timesteps, and the chosen (b, t).
  const tt = performance.now();
  const testTimesteps = [...new Set([...HEAD_TIMESTEPS, best.t])].sort((a, b) => a - b);
  // DifFeed's evaluation reads its first pass (the feedback blocks at t 150, same noise) from here.
  const testBlocks = [...new Set([...headBlocks, ...roles.bottleneck, best.b])].sort((a, b) => a - b);
  const testExtraction = await extract('test', test, testIdx, testTimesteps, testBlocks);
  const testFeatures = testExtraction.features;
  const testSeconds = (performance.now() - tt) / 1000;
  const testPart = `t {${testTimesteps}} × blocks {${testBlocks}} for ${testIdx.length} images`;
  log(testExtraction.extracted ? `extraction (test): ${testPart} in ${fmtTime(testSeconds)}` : `test features (${testPart}) read from the cache of an earlier run in ${fmtTime(testSeconds)}`);

  const gd = await linearProbe(trainFeatures, testFeatures, best);
  record('GD linear probe', `b ${best.b}, t ${best.t}, ${describe(best)}`, gd, `chosen on validation from b ∈ {1..${allBlocks.length}} × t ∈ {${SWEEP_TIMESTEPS}} × pool ∈ {${SWEEP_POOLS}} × standardisation off/on`);

  const att = await fit(trainFeatures, testFeatures, { head: 'attention', timesteps: [150], blocks: [roles.feature], attention, lr: headLr }, 'Attention head');
  record('Attention head', `b ${roles.feature}, t 150`, att, JSON.stringify(attention));
  const dif = await fit(trainFeatures, testFeatures, { head: 'attention', timesteps: HEAD_TIMESTEPS, blocks: roles.difformer, attention, lr: headLr }, 'DifFormer');
  record('DifFormer', `b {${roles.difformer}}, t {${HEAD_TIMESTEPS}}`, dif, JSON.stringify(attention));

  const difeedEpochs = o.difeedEpochs;
  const bar = o.progress('DifFeed', 'batches');
  let feedEpoch = 0;
  const feed = await fitDifFeed(e, unet, imageSource(train, trainIdx, S), imageSource(test, testIdx, S), {
    classes: 10, strategy: 'bottleneck', t: 150, head: attention, headLr, epochs: difeedEpochs, stepSize: o.difeedStepSize, batchSize: 16, evalBatchSize: 100, testFirstPass: testFeatures, testNoiseSeed: extractionNoiseSeed(seed, datasetOf('test')), seed,
    onEpoch: (i) => (feedEpoch = i.epoch + 1), onBatch: (d, n) => bar(feedEpoch * n + d, difeedEpochs * n),
  });
  record('DifFeed (bottleneck)', `feedback {${roles.bottleneck}} → b ${roles.feature}, t 150`, feed, `${difeedEpochs} epochs, StepLR(${o.difeedStepSize}), batch 16, flip, evaluation's first pass from the test extraction, feedback lr 1e-3, head lr ${headLr}`);

  const byName = Object.fromEntries(rows.map((r) => [r.method, r.top1]));
  const ranking = ['GD linear probe', 'Attention head', 'DifFormer', 'DifFeed (bottleneck)'].sort((a, b) => byName[a] - byName[b]);
  const heads = rows.filter((r) => r.method !== 'raw-pixel linear probe');
  const beatsRaw = heads.filter((r) => r.top1 > raw.top1).map((r) => r.method);
  // "Beats clearly": the gap exceeds twice the standard error of the difference, paired over the
  // same test images (both probes err on many of the same images: hypot of the two binomial errors
  // overstated it by 1.6× on 400 images).
  const clearly = heads.filter((r) => r.top1 - raw.top1 > 2 * r.vsRawStdErr).map((r) => r.method);
  const findings = [
    `diffusion features vs raw pixels: ${beatsRaw.length ? `${beatsRaw.join(', ')} beat the raw-pixel probe (${fmtPercent(raw.top1)}%)` : `none beats the raw-pixel probe (${fmtPercent(raw.top1)}%)`}; by more than twice the standard error of the difference (paired over the test images): ${clearly.length ? clearly.join(', ') : 'none'}`,
    `ordering found (lowest → highest top-1; <: by more than twice the paired standard error, ≈: within it, =: the same): ${describeOrdering(ranking.map((name) => ({ name, top1: byName[name], hits: hitsOf.get(name)! })))}; the paper's: GD linear < Attention < DifFormer / DifFeed`,
  ];
  for (const f of findings) log(f);
  return {
    samples: sampleLine,
    data: { train: trainIdx.length, validation: valRows.length, test: testIdx.length, full, seed },
    // seconds: this run's, an extraction's only where imagesExtracted is the whole split (else partly or only a cache read).
    extraction: {
      train: { timesteps: SWEEP_TIMESTEPS, blocks: allBlocks, imagesExtracted: trainExtraction.extracted, seconds: trainSeconds },
      test: { timesteps: testTimesteps, blocks: testBlocks, imagesExtracted: testExtraction.extracted, seconds: testSeconds },
    },
    schedule: { ...schedule, sweepEpochs: o.sweepEpochs, difeedEpochs, difeedStepSize: o.difeedStepSize, attention, headLr }, sweep: sweep.points, pixelSweep: pixelSweep.points, rows, findings,
  };
}

/** Free bytes on the file system of `dir` (Infinity where statfs is not available, as under some runtimes). */
async function freeBytesUnder(dir: string): Promise<number> {
  const statfs = (fsp as { statfs?: (path: string) => Promise<{ bavail: number; bsize: number }> }).statfs;
  if (!statfs) return Number.POSITIVE_INFINITY;
  const st = await statfs(dir);
  return st.bavail * st.bsize;
}

/** Bytes of the files under `dir` (0 when there is none). */
async function bytesUnder(dir: string): Promise<number> {
  let total = 0;
  for (const entry of await fsp.readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) total += await bytesUnder(path);
    else if (entry.isFile()) total += (await fsp.stat(path)).size;
  }
  return total;
}

/** The folder of the demo's feature cache of `split` at `timesteps` × `blocks`. */
const featureCacheDir = (outDir: string, split: 'train' | 'test', timesteps: number[], blocks: number[]) => join(outDir, `features-${split}-t${timesteps.join('_')}-b${blocks.join('_')}`);

const sizeText = (n: number) => (n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : `${Math.ceil(n / 1e6)} MB`);

/**
 * The feature caches must fit the disk under `outDir` (`freeBytes`, plus `cachedBytes` an earlier
 * run's training cache holds, which is reused or replaced) and, loaded, memory (the training cache twice: the
 * sweep copies its fit and validation rows). The training cache holds every block × the sweep's
 * timesteps at full map size; the test cache the heads' blocks and timesteps and the sweep's
 * choice, not made yet: sized for the largest. --full's would take 81 GB for fmnist16, ending in
 * ENOSPC or out of memory after hours of extraction. Refused up front, with the sizes.
 */
export function checkRoom(unet: UNet, trainImages: number, testImages: number, outDir: string, freeBytes: number, cachedBytes = 0): void {
  const blockBytes = unet.plan.blocks.map((b) => 4 * b.outChannels * b.size ** 2);
  const perTrainImage = SWEEP_TIMESTEPS.length * blockBytes.reduce((n, b) => n + b, 0);
  const roles = paperBlocks(unet.plan);
  const testBlocks = new Set([...roles.difformer, roles.feature, ...roles.bottleneck]);
  const chosen = Math.max(0, ...blockBytes.filter((_, i) => !testBlocks.has(i + 1)));
  const perTestImage = (HEAD_TIMESTEPS.length + 1) * ([...testBlocks].reduce((n, b) => n + blockBytes[b - 1], 0) + chosen);
  const [train, test] = [trainImages * perTrainImage, testImages * perTestImage];
  const room = freeBytes + cachedBytes;
  const earlier = cachedBytes ? ` (${sizeText(cachedBytes)} of it held by an earlier run's training cache, which is reused or replaced)` : '';
  if (train + test > room || 2 * train + test > totalmem()) {
    throw new RangeError(
      `the demo's feature caches would take ${sizeText(train + test)} on disk — training: ${trainImages} images × ${SWEEP_TIMESTEPS.length} timesteps × every block's full maps, ${sizeText(train)}; test: ${testImages} images, at most ${sizeText(test)} — ` +
        `where ${outDir} has ${sizeText(room)} free${earlier}, and about ${sizeText(2 * train + test)} of memory (${sizeText(totalmem())} here): use fewer training images (--train-per-class) or test images (--test-per-class)`,
    );
  }
}

/**
 * Methods in ascending top-1 order joined by how each compares with the one before on the same test
 * images: '=' the same top-1, '<' higher by more than twice the paired standard error, '≈' within
 * it (a tie or a gap within the noise is not an ordering).
 */
export function describeOrdering(ranked: readonly { name: string; top1: number; hits: Uint8Array }[]): string {
  return ranked.map((m, i) => {
    if (i === 0) return m.name;
    const lower = ranked[i - 1];
    const gap = m.top1 - lower.top1;
    const relation = gap === 0 ? '=' : gap > 2 * pairedStdErr(m.hits, lower.hits) ? '<' : '≈';
    return ` ${relation} ${m.name}`;
  }).join('');
}

/** Standard error of the mean of a[i] − b[i] (each 0 or 1) over n images: sqrt((mean of d² − (mean of d)²) / n). */
export function pairedStdErr(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) throw new RangeError(`pairedStdErr: ${a.length} against ${b.length} test images`);
  let sum = 0;
  let squares = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    sum += d;
    squares += d * d;
  }
  const mean = sum / a.length;
  return Math.sqrt((squares / a.length - mean * mean) / a.length);
}

/** Histogram (bins over [−1, 1]) of grey values, normalised to sum 1. */
function histogram(data: Float32Array, bins = 16): Float64Array {
  const h = new Float64Array(bins);
  for (const v of data) h[Math.min(bins - 1, Math.max(0, Math.floor(((v + 1) / 2) * bins)))]++;
  return h.map((c) => c / data.length);
}

const totalVariation = (a: Float64Array, b: Float64Array) => 0.5 * a.reduce((s, v, i) => s + Math.abs(v - b[i]), 0);

/** The grey model input ([count, 1, S, S]) as a cached "feature" for the raw-pixel probe. */
function rawPixels(ds: GreyImages, indices: number[], S: number): FeatureArrays {
  const rgb = toModelInput(ds, indices, S);
  const grey = new Float32Array(indices.length * S * S);
  for (let n = 0; n < indices.length; n++) grey.set(rgb.subarray(n * 3 * S * S, n * 3 * S * S + S * S), n * S * S);
  return { features: new Map([[featureKey(0, PIXEL_BLOCK), { data: grey, shape: [1, S, S] }]]), labels: indices.map((i) => ds.labels[i]), count: indices.length };
}

/** Rows `rows` of cached features (a split of the subset). */
function subsetArrays(f: FeatureArrays, rows: number[]): FeatureArrays {
  const features = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const [k, v] of f.features) {
    const per = v.shape.reduce((p, d) => p * d, 1);
    const data = new Float32Array(rows.length * per);
    rows.forEach((r, i) => data.set(v.data.subarray(r * per, (r + 1) * per), i * per));
    features.set(k, { data, shape: v.shape });
  }
  return { features, labels: rows.map((r) => f.labels[r]), count: rows.length };
}

async function samplesAndSanity(e: Engine, unet: UNet, ds: GreyImages, outDir: string, log: (line: string) => void): Promise<string> {
  const S = unet.plan.flags.image_size;
  const count = 36;
  const t0 = performance.now();
  const x = await sample(e, unet, { count, seed: 0, ddimSteps: 50 });
  const data = await x.read();
  x.dispose();
  await writeImageGridPng(join(outDir, 'samples.png'), data, count, unet.plan.flags.in_channels, S, 6);
  // An honest look: how far the samples' grey-level histogram is from real images', next to the
  // same distance between two sets of real images of the same size, and for pure noise.
  const real = (n: number, seed: number) => histogram(toModelInput(ds, seededShuffle(Array.from({ length: ds.count }, (_, i) => i), seed).slice(0, n), S));
  const reference = real(2000, 1);
  const realSpread = [2, 3, 4, 5, 6].map((s) => totalVariation(real(count, s), reference));
  const rand = mulberry32(0);
  const noise = histogram(Float32Array.from({ length: count * 3 * S * S }, () => 2 * rand() - 1));
  const line = `sample grid: ${count} DDIM-50 samples → ${join(outDir, 'samples.png')} (${fmtTime((performance.now() - t0) / 1000)}); ` +
    `grey-level histogram distance (total variation) to 2000 real images: samples ${totalVariation(histogram(data), reference).toFixed(3)}, ` +
    `${count} real images ${Math.min(...realSpread).toFixed(3)}–${Math.max(...realSpread).toFixed(3)}, uniform noise ${totalVariation(noise, reference).toFixed(3)}`;
  log(line);
  const denoise = await denoisingCheck(e, unet, ds);
  log(denoise);
  return `${line}; ${denoise}`;
}

/**
 * What the model learned, independent of sampling: on 100 real images noised to t, the one-step
 * estimate x̂0 = (x_t − sqrt(1−ᾱ_t)·ε̂) / sqrt(ᾱ_t) against the naive x_t / sqrt(ᾱ_t), in PSNR.
 */
async function denoisingCheck(e: Engine, unet: UNet, ds: GreyImages): Promise<string> {
  const S = unet.plan.flags.image_size;
  const n = 100;
  const x0 = toModelInput(ds, Array.from({ length: n }, (_, i) => i), S);
  const sch = linearSchedule(1000);
  const psnr = (a: Float32Array) => {
    let se = 0;
    for (let i = 0; i < a.length; i++) se += (a[i] - x0[i]) ** 2;
    return 10 * Math.log10(4 / (se / a.length)); // peak-to-peak range 2 → 2² = 4
  };
  const parts: string[] = [];
  for (const t of [150, 500]) {
    const ab = sch.alphasCumprod[t];
    const noise = gaussianNoise(x0.length, 7 + t);
    const xt = Float32Array.from(x0, (v, i) => Math.sqrt(ab) * v + Math.sqrt(1 - ab) * noise[i]);
    // ε̂ is the output's first 3 channels (a learn_sigma model's other 3 are its variance).
    const eps = await e.noGrad(() => e.tidy(() => slice(unet.forward(e.tensor(xt, [n, 3, S, S]), new Array(n).fill(t), { output: true }).output!, [0, 0], [n, 3]))).readAndDispose();
    const naive = Float32Array.from(xt, (v) => v / Math.sqrt(ab));
    const est = Float32Array.from(xt, (v, i) => (v - Math.sqrt(1 - ab) * eps[i]) / Math.sqrt(ab));
    parts.push(`t=${t}: ${psnr(est).toFixed(1)} dB (noisy input ${psnr(naive).toFixed(1)} dB)`);
  }
  return `one-step denoising of 100 training images, PSNR of x̂0: ${parts.join(', ')}`;
}

