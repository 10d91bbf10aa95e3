// difrep extract | train | knn | cka | sweep | merge: the paper's experiments on Fashion-MNIST (or any dataset
// given as an ImageSource), from cached features.
import { existsSync } from 'node:fs';
import { mkdir, readFile, realpath, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { tunedEngine } from './tuning-cache.ts';
import { removeStaleTempFiles, writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { describeMapping, type PaperBlocks, paperBlocks } from '../model/block-roles.ts';
import { flagsFromJson, planUNet } from '../model/unet-config.ts';
import { type DifFeedOptions, FEEDBACK_STRATEGIES, feedbackPlan } from '../model/heads/difeed.ts';
import { type CacheSignature, signatureDifferences } from '../train/cache-signature.ts';
import { checkLabels, checkSameExtraction, checkTrainTestCaches, isPixelCache, loadCachedFeatures, sameSplitWarning, splitClasses } from '../train/cached-features.ts';
import { DecodePool } from '../train/data/decode-pool.ts';
import { balancedSubset, FASHION_MNIST_CLASSES, imageSource, loadFashionMnist } from '../train/data/fashion-mnist.ts';
import { FOLDER_DECODER, folderFingerprint, FOLDER_PREPROCESSING, scanImageFolder, validateImageFolder } from '../train/data/image-folder.ts';
import { ckaMatrix } from '../train/eval/cka.ts';
import { knnClassify } from '../train/eval/knn.ts';
import { checkExistingCache, type ExtractOptions, extractFeatures, extractionNoiseSeed, extractPixels, featureKey, type ImageSource, openFeatureCache, PIXEL_BLOCK, validateExtractOptions } from '../train/extract.ts';
import { classificationReport } from '../train/eval/classification.ts';
import { type FeatureArrays, fitHead, trainedHeadLogits } from '../train/fit.ts';
import { readStateProgress, readStateSettings } from '../train/checkpoint.ts';
import { fitDifFeed } from '../train/fit-difeed.ts';
import { standardizeSplits } from '../train/standardize.ts';
import { bestSweepRow, sweepLinearProbes } from '../train/sweep.ts';
import { given, type OptionSpecs, parseArgs, UsageError } from './args.ts';
import { checkpointHash, loadModel, MODEL_OPTIONS, resolveFlags } from './model-options.ts';
import { checkChartOutput, checkOutputFile, checkOutputFolder, type KeptPath } from './output-file.ts';
import { holdRunFolder } from './run-folder.ts';
import { fmtTime, progressBar } from './progress.ts';
import { heatmapSvg } from './render/charts.ts';
import { writeSweepHeatmaps } from './render/sweep-heatmaps.ts';
import { writeChart } from './render/write-chart.ts';

const warnIf = (warning: string | undefined) => {
  if (warning) console.error(`difrep: ${warning}`);
};

/** The paper's blocks mapped by role onto the U-Net whose config the cache in `dir` records (the mapping printed when mapped). */
async function paperBlocksOf(command: string, dir: string): Promise<PaperBlocks> {
  const { signature } = await openFeatureCache(dir, { verifyAll: false, writeManifest: false });
  const plan = (() => {
    try {
      return planUNet(flagsFromJson(String(signature.config)));
    } catch {
      throw new UsageError(`difrep ${command}: ${dir} records no U-Net config to map the paper's blocks onto: give --b`);
    }
  })();
  const roles = paperBlocks(plan);
  if (roles.mapped) console.error(`difrep: ${describeMapping(plan)}`);
  return roles;
}

/** A top-5 accuracy as printed: with 5 classes or fewer every label ranks in the top 5, so it says nothing. */
const top5Text = (top5: number, classes: number) => `${(100 * top5).toFixed(2)}%${classes <= 5 ? ` (any label is in the top 5 of ${classes} classes)` : ''}`;

/** The feature caches a command reads, which its outputs must not replace or write into. */
const cachesRead = (o: { train: string; test: string }): KeptPath[] => [
  { path: o.train, what: 'the training feature cache --train reads' },
  { path: o.test, what: 'the test feature cache --test reads' },
];

/** The last diffusion timestep (T = 1000 steps, t ∈ 0..999). */
const T_MAX = 999;
/** Bounds on counts a flag can ask for (images per class, per chunk) and on seeds (32-bit generators). */
const MAX_IMAGES = 10_000_000;
const MAX_SEED = 2 ** 31 - 1;

/** --shard i/n, else Slurm job arrays (SLURM_ARRAY_TASK_ID/COUNT), else Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX + --shards). */
/** A whole number from the environment variable `name` (or `fallback` when unset); anything else is a UsageError. */
function envInt(env: Record<string, string | undefined>, name: string, fallback?: number): number {
  const raw = env[name];
  if (raw === undefined && fallback !== undefined) return fallback;
  if (raw === undefined || !/^\s*\d+\s*$/.test(raw)) throw new UsageError(`${name} must be a whole number, got ${raw === undefined ? 'nothing' : JSON.stringify(raw)}`);
  return Number(raw);
}

export function shardFrom(arg: string | undefined, shards: string | undefined, env: Record<string, string | undefined>): { index: number; count: number } | undefined {
  let index: number | undefined;
  let count: number | undefined;
  if (arg) {
    const m = /^(\d+)\/(\d+)$/.exec(arg);
    if (!m) throw new UsageError(`--shard must look like i/n (0-based), got ${arg}`);
    [index, count] = [Number(m[1]), Number(m[2])];
  } else if (env.SLURM_ARRAY_TASK_ID !== undefined && env.SLURM_ARRAY_TASK_COUNT !== undefined) {
    // --array=MIN-MAX:STEP numbers its tasks MIN, MIN + STEP, …; a comma list (--array=1,4,9) has no STEP to index by.
    const [id, min, step] = [envInt(env, 'SLURM_ARRAY_TASK_ID'), envInt(env, 'SLURM_ARRAY_TASK_MIN', 0), envInt(env, 'SLURM_ARRAY_TASK_STEP', 1)];
    if ((id - min) % step !== 0 || step < 1) throw new UsageError(`SLURM_ARRAY_TASK_ID ${id} is not SLURM_ARRAY_TASK_MIN ${min} plus a multiple of SLURM_ARRAY_TASK_STEP ${step}: use --array=MIN-MAX[:STEP], or give --shard i/n`);
    [index, count] = [(id - min) / step, envInt(env, 'SLURM_ARRAY_TASK_COUNT')];
  } else if (env.JOB_COMPLETION_INDEX !== undefined) {
    if (!shards) throw new UsageError('JOB_COMPLETION_INDEX is set: give the number of shards with --shards n');
    if (!/^\d+$/.test(shards)) throw new UsageError(`--shards must be a whole number, got ${JSON.stringify(shards)}`);
    [index, count] = [envInt(env, 'JOB_COMPLETION_INDEX'), Number(shards)];
    shards = undefined;
  }
  // Read only with JOB_COMPLETION_INDEX: anywhere else it would be ignored, the shard taken from elsewhere or none.
  if (shards !== undefined) throw new UsageError(`--shards ${shards} goes with Kubernetes' JOB_COMPLETION_INDEX, which is ${env.JOB_COMPLETION_INDEX === undefined ? 'not set' : 'overridden here'}: give this worker's share as --shard i/n`);
  if (index === undefined || count === undefined) return undefined;
  if (!(count >= 1 && index >= 0 && index < count)) throw new UsageError(`shard ${index}/${count} is out of range`);
  return { index, count };
}

const EXTRACT = {
  ...MODEL_OPTIONS,
  dataset: { type: 'string', choices: ['fashion-mnist', 'folder'], help: 'fashion-mnist, or folder (an ImageFolder: --root DIR/<class>/<image>.png|jpg)', default: 'fashion-mnist' },
  root: { type: 'string', meta: 'DIR', help: 'with --dataset folder: the image folder' },
  split: { type: 'string', choices: ['train', 'test'], help: 'fashion-mnist: the split', default: 'train' },
  'per-class': { type: 'int', min: 0, max: MAX_IMAGES, help: 'images per class (a seeded, class-balanced subset; 0 = the whole split)', default: 0 },
  features: { type: 'string', choices: ['unet', 'pixels'], help: 'unet: f(x0, t, b); pixels: the model input x0 itself (the raw-pixel baseline, read by train, knn and sweep without --t/--b)', default: 'unet' },
  t: { type: 'ints', min: 0, max: T_MAX, unique: true, help: 'timesteps, comma-separated (default 150)' },
  b: { type: 'ints', min: 1, unique: true, help: 'blocks, comma-separated (default: the paper\'s b24, mapped by role on other depths)' },
  pool: { type: 'int', min: 0, max: 1024, help: 'adaptive-average-pool every map to at most this size (smaller maps are kept; 0 = keep full maps)', default: 0 },
  batch: { type: 'int', min: 1, max: 4096, help: 'images per U-Net batch', default: 8 },
  chunk: { type: 'int', min: 1, max: MAX_IMAGES, help: 'images per cache file', default: 256 },
  seed: { type: 'int', min: 0, max: MAX_SEED, help: 'seed of the per-image noise and of the subset', default: 0 },
  shard: { type: 'string', meta: 'i/n', help: 'this worker\'s share i/n (0-based); also read from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX' },
  shards: { type: 'string', meta: 'n', help: 'number of shards for Kubernetes Indexed Jobs (with JOB_COMPLETION_INDEX)' },
  out: { type: 'string', meta: 'DIR', required: true, help: 'output directory' },
} satisfies OptionSpecs;

async function extractCommand(argv: string[]): Promise<number> {
  const o = parseArgs('extract', argv, EXTRACT);
  if (!o) return 0;
  if (o.dataset === 'folder' && !o.root) throw new UsageError('difrep extract: --dataset folder needs --root DIR');
  if (o.dataset !== 'folder' && o.root) throw new UsageError('difrep extract: --root is for --dataset folder');
  if (o.dataset === 'folder' && given(argv, 'split')) throw new UsageError('difrep extract: --split picks a Fashion-MNIST split; an image folder is one split: give each split\'s folder as --root');
  const shard = shardFrom(o.shard, o.shards, process.env);
  // A cache inside the image folder would become one of its classes (and its own next input).
  await checkOutputFolder('extract', 'out', o.out, o.root ? [{ path: o.root, what: 'the image folder of --root' }] : []);
  // Everything is checked — the blocks against the config, the settings against an existing cache
  // in --out — before the model is loaded or anything is computed.
  const pixels = o.features === 'pixels';
  if (pixels && (o.t || o.b || o.checkpoint)) throw new UsageError('difrep extract: --features pixels stores the model input itself: no --t, --b or --checkpoint (--model sets the image size)');
  const flags = await resolveFlags(o.model);
  const plan = planUNet(flags);
  if (!pixels && plan.flags.in_channels !== 3) throw new UsageError(inChannelsMismatch('extract', o.model, plan.flags.in_channels));
  const ts = pixels ? [0] : (o.t ?? [150]);
  const bs = pixels ? [PIXEL_BLOCK] : (o.b ?? [paperBlocks(plan).feature]);
  for (const b of bs) if (b > plan.blocks.length) throw new UsageError(`difrep extract: --b ${b}: this U-Net has blocks 1..${plan.blocks.length}`);
  const size = flags.image_size;
  let source: ImageSource;
  let datasetName: string;
  let dataset: Record<string, string>;
  const closers: (() => Promise<void>)[] = [];
  if (o.dataset === 'folder') {
    const scanned = await scanImageFolder(o.root!);
    for (const w of scanned.warnings) console.error(`difrep: warning: ${w}`);
    const { folder, skipped, imagesPerSecond } = await validateImageFolder(scanned, progressBar('decode', 'images'));
    for (const s of skipped) console.error(`difrep: warning: skipped unreadable image ${s.file}: ${s.error}`);
    console.log(`decoded ${scanned.files.length} images at ${imagesPerSecond.toFixed(1)} images/s; ${skipped.length} unreadable skipped; classes: ${folder.classes.join(', ')}`);
    const idx = o['per-class'] ? balancedSubset(folder.labels, o['per-class'], o.seed, folder.classes.length) : folder.files.map((_, i) => i);
    if (o['per-class']) {
      const short = folder.classes.map((name, c) => [name, folder.labels.filter((l) => l === c).length] as const).filter(([, n]) => n < o['per-class']!);
      if (short.length) console.error(`difrep: warning: --per-class ${o['per-class']}, but ${short.map(([name, n]) => `${name} has ${n}`).join(', ')}: the subset is not balanced (${idx.length} images)`);
    }
    const pool = new DecodePool(2);
    closers.push(() => pool.close());
    // Each file is decoded against its digest in the fingerprint the cache records.
    const { fingerprint, sha256 } = await folderFingerprint(folder, idx);
    source = {
      count: idx.length,
      labels: idx.map((i) => folder.labels[i]),
      images: async (sel) => (await pool.decode(sel.map((i) => folder.files[idx[i]]), size, undefined, sel.map((i) => sha256[i]))).images,
    };
    // The folder's real path, however --root spells it: the same images get the same noise, and the
    // same name (the warning about test scores on training images compares it).
    datasetName = `folder:${await realpath(o.root!)}/per-class=${o['per-class']}`;
    // Labels number the class folders in sorted order: a test folder with other classes would shift them.
    // The decoder and preprocessing are recorded too: caches extracted before JPEGs were decoded as
    // Pillow does, or before the preprocessing became center_crop_arr, hold other x0s.
    dataset = { classes: JSON.stringify(folder.classes), files: fingerprint, decoder: FOLDER_DECODER, preprocess: FOLDER_PREPROCESSING };
  } else {
    ({ source, datasetName } = await fashionMnistSubset('extract', o.split as 'train' | 'test', o['per-class'] ?? 0, 'per-class', o.seed, size));
    dataset = { classes: JSON.stringify(FASHION_MNIST_CLASSES) };
  }
  const options: ExtractOptions = {
    outDir: o.out, timesteps: ts, blocks: bs, pool: o.pool || undefined, batchSize: o.batch, chunkSize: o.chunk, seed: o.seed, shard,
    provenance: { config: JSON.stringify(flags), checkpoint: pixels ? 'none (pixels)' : await checkpointHash(o.checkpoint), dataset: datasetName, ...dataset },
    onProgress: progressBar('extract', 'images'),
  };
  try {
    await checkExistingCache(o.out, validateExtractOptions(options, source.count));
    // Shards on other machines may be writing into a shared --out: only an unsharded run clears temp files.
    if (!shard) await removeStaleTempFiles(o.out);
    const e = await tunedEngine();
    const t0 = performance.now();
    let written: number;
    if (pixels) written = await extractPixels(e, size, source, options);
    else {
      // The flags the cache records: the --model file is not read again.
      const { unet, hash } = await loadModel(e, o.model, o.checkpoint, { flags });
      // The cache records the hash taken before its existing chunks were checked; the weights loaded must be those.
      if (hash !== options.provenance.checkpoint) throw new UsageError(`--checkpoint ${o.checkpoint} changed between its check and its load (is a training run rewriting it?): copy it to a file nothing writes to, and run again`);
      written = await extractFeatures(e, unet, source, options);
    }
    const secs = (performance.now() - t0) / 1000;
    console.log(`extracted ${written} images (${pixels ? 'pixels' : `t ${ts}, b ${bs}`}) in ${fmtTime(secs)}: ${(written / secs).toFixed(2)} images/s → ${o.out}`);
    // A whole cache gets its manifest now (a shard's cache only at merge): its readers write none.
    if (!shard) await openFeatureCache(o.out, { verifyAll: false });
    e.dispose();
  } finally {
    for (const close of closers) await close();
  }
  return 0;
}

/** Whether both caches hold raw pixels (then no t or b is chosen); a pixel cache beside a feature cache is refused. */
async function pixelCaches(train: string, test: string, argv: readonly string[]): Promise<boolean> {
  const [a, b] = [await isPixelCache(train), await isPixelCache(test)];
  if (a !== b) throw new UsageError(`${a ? train : test} holds raw pixels but ${a ? test : train} holds U-Net features: give two caches of the same kind`);
  if (a && (given(argv, 'b') || given(argv, 't'))) throw new UsageError(`${train} is a raw-pixel cache: it has no blocks or timesteps, leave out --b and --t`);
  return a;
}

/**
 * The side of the images in the pixel cache `dir` (its model's image size, or the pool it was
 * extracted to): the pixel baseline's default pool, the whole image. A probe on the linear probe's
 * default pool of 2 read four grey values (14.6 % where the whole 16 × 16 image gives 72.7 %).
 */
async function pixelSize(dir: string): Promise<number> {
  const { signature } = await openFeatureCache(dir, { verifyAll: false, writeManifest: false });
  const size = planUNet(flagsFromJson(String(signature.config))).flags.image_size;
  return Math.min(size, signature.pool ?? size);
}

const TRAIN = {
  train: { type: 'string', meta: 'DIR', help: 'feature cache of the training split (required except for difeed)' },
  test: { type: 'string', meta: 'DIR', help: 'feature cache of the test split (required except for difeed)' },
  head: { type: 'string', choices: ['linear', 'attention', 'difformer', 'difeed'], help: 'the head; difeed trains from Fashion-MNIST images with the U-Net live', default: 'linear' },
  ...MODEL_OPTIONS,
  strategy: { type: 'string', choices: FEEDBACK_STRATEGIES, help: 'difeed: which decoder blocks feed back', default: 'bottleneck' },
  'per-class': { type: 'int', min: 1, max: MAX_IMAGES, help: 'difeed: training images per class', default: 10 },
  'test-per-class': { type: 'int', min: 1, max: MAX_IMAGES, help: 'difeed: test images per class', default: 10 },
  flip: { type: 'string', choices: ['true', 'false'], help: 'difeed: random horizontal flips (seeded)', default: 'true' },
  t: { type: 'ints', min: 0, max: T_MAX, unique: true, help: 'timesteps (linear and difeed: one; default 150, difformer 90,150,300 as the paper)' },
  b: { type: 'ints', min: 1, unique: true, help: 'blocks (linear: one; difeed: the pass-2 feature block; default the paper\'s b24, difformer its {19,24,30}, mapped by role onto the U-Net)' },
  pool: { type: 'int', min: 1, max: 1024, help: 'linear probe: adaptive pool size (on a raw-pixel cache, without --pool: the whole image)', default: 2 },
  standardize: { type: 'flag', help: 'linear probe: standardise every pooled feature dimension with the training split\'s mean and std (off: the paper\'s protocol)' },
  dim: { type: 'int', min: 1, max: 16384, help: 'attention heads: token width d', default: 1024 },
  layers: { type: 'int', min: 1, max: 64, help: 'attention heads: Transformer layers', default: 2 },
  heads: { type: 'int', min: 1, max: 256, help: 'attention heads: attention heads', default: 8 },
  'pre-pool': { type: 'int', min: 1, max: 1024, help: 'attention heads: tokenizer pools larger maps to this size', default: 16 },
  classes: { type: 'int', min: 2, max: 100_000, help: 'number of classes (default: as many as the training cache records, else 10; difeed: Fashion-MNIST\'s 10)' },
  epochs: { type: 'int', min: 1, max: 100_000, help: 'epochs (a resumed run may raise it, not lower it)', default: 28 },
  batch: { type: 'int', min: 1, max: 65_536, help: 'batch size (default 128; difeed 16, as CLARIFICATIONS: its BatchNorm sees the batch)' },
  optimizer: { type: 'string', choices: ['adam', 'sgd'], help: 'adam (the paper) or sgd (the released scripts: plain SGD)', default: 'adam' },
  lr: { type: 'number', above: 0, max: 10, help: 'learning rate (default: 1e-3 linear / 1e-4 attention and the DifFeed head, its feedback layers 1e-3, with Adam; 1e-2 linear and DifFeed, both groups / 5e-2 attention with SGD)' },
  'step-size': { type: 'int', min: 1, max: 100_000, help: 'StepLR step in epochs', default: 7 },
  gamma: { type: 'number', above: 0, max: 1, help: 'StepLR factor', default: 0.1 },
  seed: { type: 'int', min: 0, max: MAX_SEED, help: 'initialisation and shuffling seed', default: 0 },
  out: { type: 'string', meta: 'DIR', required: true, help: 'output directory for state.safetensors (every epoch) and result.json' },
  resume: { type: 'flag', help: 'continue the run in --out (same settings; --epochs may grow)' },
  'checkpoint-every': { type: 'number', above: 0, help: 'seconds between saves within an epoch (the end of each epoch saves too; --resume continues at the next batch)', default: 300 },
  'bn-train-epochs': { type: 'int', min: 0, max: 100_000, help: 'difeed: epochs whose feedback BatchNorm uses batch statistics; later ones train with the running statistics frozen (default: all; 7 as the released code, whose first evaluation leaves the model in eval mode)' },
} satisfies OptionSpecs;

type TrainOptions = NonNullable<ReturnType<typeof parseArgs<typeof TRAIN>>>;

/**
 * The heads each head-specific option of TRAIN applies to. Given for another head, an option is
 * refused: ignored, --per-class would leave a linear probe training on the whole cache, --pool an
 * attention head's tokens as they were.
 */
const TRAIN_OPTION_HEADS: Partial<Record<keyof typeof TRAIN, readonly string[]>> = {
  ...Object.fromEntries(['model', 'checkpoint', 'strategy', 'per-class', 'test-per-class', 'flip', 'bn-train-epochs'].map((k) => [k, ['difeed']])),
  ...Object.fromEntries(['pool', 'standardize'].map((k) => [k, ['linear']])),
  ...Object.fromEntries(['dim', 'layers', 'heads', 'pre-pool'].map((k) => [k, ['attention', 'difformer', 'difeed']])),
};

async function trainCommand(argv: string[]): Promise<number> {
  const o = parseArgs('train', argv, TRAIN);
  if (!o) return 0;
  if (o.head !== 'linear' && o.dim % o.heads !== 0) throw new UsageError(`difrep train: --dim ${o.dim} does not split into --heads ${o.heads}: give a dim that is a multiple of the heads`);
  if (o.head === 'difeed') {
    // DifFeed runs the U-Net live on Fashion-MNIST (--per-class, --test-per-class): no caches, no probe pooling.
    const cacheOptions = ['train', 'test', 'standardize', 'pool'].filter((k) => given(argv, k));
    if (cacheOptions.length) throw new UsageError(`difrep train: --head difeed reads images, not feature caches: leave out ${cacheOptions.map((k) => `--${k}`).join(', ')}`);
  }
  const misplaced = Object.entries(TRAIN_OPTION_HEADS).filter(([k, heads]) => given(argv, k) && !heads!.includes(o.head));
  if (misplaced.length) {
    throw new UsageError(`difrep train: ${misplaced.map(([k, heads]) => `--${k} (for ${heads!.join(', ')})`).join(', ')} ${misplaced.length === 1 ? 'is' : 'are'} not for --head ${o.head}: leave ${misplaced.length === 1 ? 'it' : 'them'} out`);
  }
  if (o.head === 'difeed') return trainDifFeed(o);
  for (const k of ['train', 'test'] as const) if (!o[k]) throw new UsageError(`difrep train: --${k} is required for --head ${o.head}`);
  await checkOutputFolder('train', 'out', o.out, cachesRead({ train: o.train!, test: o.test! }));
  if (o.head === 'linear' && o.b && ((o.t && o.t.length !== 1) || o.b.length !== 1)) throw new UsageError(`difrep train: a linear probe reads one t and one b, got --t ${o.t} --b ${o.b} (difformer fuses several)`);
  const pixels = await pixelCaches(o.train!, o.test!, argv);
  const probePool = pixels && !given(argv, 'pool') ? await pixelSize(o.train!) : o.pool;
  if (probePool !== o.pool && o.head === 'linear') console.log(`pixel cache: the probe reads the whole ${probePool}×${probePool} image (--pool ${probePool}); give --pool to pool it`);
  const ts = pixels ? [0] : (o.t ?? (o.head === 'difformer' ? [90, 150, 300] : [150]));
  // Without --b: the paper's b24 (DifFormer: its B = {19, 24, 30}), mapped by role onto the cache's U-Net.
  const defaultBlocks = async () => {
    const roles = await paperBlocksOf('train', o.train!);
    return o.head === 'difformer' ? roles.difformer : [roles.feature];
  };
  if (o.head === 'linear' && ts.length !== 1) throw new UsageError(`difrep train: a linear probe reads one t and one b, got --t ${ts} (difformer fuses several)`);
  const bs: number[] = pixels ? [PIXEL_BLOCK] : (o.b ?? await defaultBlocks());
  // Standardised dimensions are those the probe sees: the maps pooled first, on the CPU.
  const pool = o.standardize ? probePool : 0;
  const loaded = { train: await loadCachedFeatures(o.train!, ts, bs, pool), test: await loadCachedFeatures(o.test!, ts, bs, pool) };
  warnIf(checkTrainTestCaches(loaded.train, loaded.test, o.train!, o.test!));
  const classes = splitClasses(loaded.train, loaded.test, o.classes, o.train!, o.test!);
  const { train, test, warning } = o.standardize ? standardizeSplits(loaded.train, loaded.test) : { ...loaded, warning: undefined };
  warnIf(warning);
  const e = await tunedEngine();
  const lock = await holdRunFolder(o.out);
  try {
    const head = o.head === 'difformer' ? 'attention' : o.head;
    const result = await fitHead(e, train, test, {
      head: head as 'linear' | 'attention', classes, timesteps: ts, blocks: bs, pool: probePool,
      attention: { dim: o.dim, layers: o.layers, heads: o.heads, prePoolSize: o['pre-pool'] },
      epochs: o.epochs, batchSize: o.batch ?? 128, optimizer: o.optimizer as 'adam' | 'sgd', lr: o.lr, stepSize: o['step-size'], gamma: o.gamma, seed: o.seed,
      // The training cache's signature, not only its path: a resume, or eval's standardisation, on a
      // cache extracted again with other settings at that path would read other features.
      data: { features: pixels ? 'pixels' : 'unet', train: resolve(o.train!), trainCache: loaded.train.signature, standardize: o.standardize },
      checkpoint: join(o.out, 'state.safetensors'), checkpointEverySeconds: o['checkpoint-every'], resume: o.resume, onResume: (line) => console.log(line),
      onBatch: progressBar('  batches', 'batches'),
      onEpoch: ({ epoch, epochs, loss, trainAccuracy, lr, seconds }) => console.log(`epoch ${epoch + 1}/${epochs}: loss ${loss.toFixed(4)}, train accuracy ${(100 * trainAccuracy).toFixed(1)}%, lr ${lr.toExponential(1)}, ${seconds.toFixed(1)} s (ETA ${fmtTime(seconds * (epochs - epoch - 1))})`),
    });
    const { testHits: _, ...summary } = result;
    const full = { ...summary, headArg: o.head, features: pixels ? 'pixels' : 'unet', timesteps: ts, blocks: bs, pool: o.head === 'linear' ? probePool : null, standardize: o.standardize, train: o.train, test: o.test };
    await writeFileAtomic(join(o.out, 'result.json'), JSON.stringify(full, null, 2));
    console.log(`${o.head}: top-1 ${(100 * result.top1).toFixed(2)}%, top-5 ${top5Text(result.top5, classes)} (${result.params} parameters, ${fmtTime(result.seconds)}) → ${join(o.out, 'result.json')}`);
    e.dispose();
  } finally {
    await lock.release();
  }
  return 0;
}

/**
 * Fashion-MNIST's `split`: `perClass` images of each class, a class-balanced subset picked by
 * `seed` (the whole split for 0), as model input of `size`; with the name the extraction's noise
 * seed mixes in (extractionNoiseSeed). One --seed gives extract and DifFeed the same images and noise.
 * More per class than the split holds is refused: the subset was silently smaller.
 */
async function fashionMnistSubset(command: string, split: 'train' | 'test', perClass: number, option: string, seed: number, size: number): Promise<{ source: ImageSource; datasetName: string; indices: number[] }> {
  const ds = await loadFashionMnist(split);
  const counts = new Array<number>(FASHION_MNIST_CLASSES.length).fill(0);
  for (const y of ds.labels) counts[y]++;
  const fewest = Math.min(...counts);
  if (perClass > fewest) {
    const all = command === 'extract' ? ', or 0 for the whole split' : '';
    throw new UsageError(`difrep ${command}: --${option} ${perClass}, but Fashion-MNIST's ${split} split holds ${fewest} images of each class: give at most ${fewest}${all}`);
  }
  const indices = perClass ? balancedSubset(ds.labels, perClass, seed) : Array.from({ length: ds.count }, (_, i) => i);
  return { source: imageSource(ds, indices, size), datasetName: `fashion-mnist/${split}/per-class=${perClass}`, indices };
}

/** Images go in as 3 channels (RGB; Fashion-MNIST's grey image repeated). */
const inChannelsMismatch = (command: string, model: string, inChannels: number) =>
  `difrep ${command}: it feeds images as 3 channels (RGB; Fashion-MNIST's grey image repeated), but --model ${model} has in_channels ${inChannels}: give a config with in_channels 3`;

async function trainDifFeed(o: TrainOptions): Promise<number> {
  const t = o.t ?? [150];
  if (t.length !== 1) throw new UsageError(`difrep train: DifFeed runs at one timestep, got --t ${t}`);
  if (o.b && o.b.length !== 1) throw new UsageError(`difrep train: DifFeed feeds one pass-2 block to its head, got --b ${o.b}`);
  if (o.classes !== undefined && o.classes !== FASHION_MNIST_CLASSES.length) throw new UsageError(`difrep train: DifFeed trains on Fashion-MNIST's ${FASHION_MNIST_CLASSES.length} classes, not --classes ${o.classes}: leave it out`);
  await checkOutputFolder('train', 'out', o.out);
  // The config, the blocks and the image counts are checked before the model is loaded.
  const flags = await resolveFlags(o.model);
  const plan = planUNet(flags);
  if (plan.flags.in_channels !== 3) throw new UsageError(inChannelsMismatch('train', o.model, plan.flags.in_channels));
  if (o.b && o.b[0] > plan.blocks.length) throw new UsageError(`difrep train: --b ${o.b[0]}: this U-Net has blocks 1..${plan.blocks.length}`);
  const size = plan.flags.image_size;
  const train = await fashionMnistSubset('train', 'train', o['per-class'], 'per-class', o.seed, size);
  // The test images and their noise are those of `extract --split test --per-class N --seed S`.
  const test = await fashionMnistSubset('train', 'test', o['test-per-class'], 'test-per-class', o.seed, size);
  const e = await tunedEngine();
  const { unet, hash } = await loadModel(e, o.model, o.checkpoint, { flags });
  // The blocks in use, defaults resolved (the mapping line above names only the paper's numbers).
  const wiring = feedbackPlan(unet, { classes: FASHION_MNIST_CLASSES.length, strategy: o.strategy as DifFeedOptions['strategy'], featureBlock: o.b?.[0] });
  console.log(`difeed (${o.strategy}): feedback ${wiring.feedbackBlocks.map((b, i) => `b${b} → b${wiring.targets[i]}`).join(', ')}; the head reads b${wiring.featureBlock}`);
  const lock = await holdRunFolder(o.out);
  try {
    const result = await fitDifFeed(e, unet, train.source, test.source, {
      classes: FASHION_MNIST_CLASSES.length, strategy: o.strategy as DifFeedOptions['strategy'], t: t[0], featureBlock: o.b?.[0],
      head: { dim: o.dim, layers: o.layers, heads: o.heads, prePoolSize: o['pre-pool'] },
      epochs: o.epochs, batchSize: o.batch ?? 16, optimizer: o.optimizer as 'adam' | 'sgd',
      // Adam: --lr is the head's (the feedback layers' 1e-3); SGD: both groups' (the released scripts' one lr).
      headLr: o.lr, feedbackLr: o.optimizer === 'sgd' ? o.lr : undefined, stepSize: o['step-size'], gamma: o.gamma, seed: o.seed, testNoiseSeed: extractionNoiseSeed(o.seed, test.datasetName), flip: o.flip === 'true',
      unetWeights: hash, checkpoint: join(o.out, 'state.safetensors'), checkpointEverySeconds: o['checkpoint-every'], resume: o.resume, onResume: (line) => console.log(line), batchNormTrainEpochs: o['bn-train-epochs'],
      onBatch: progressBar('  batches', 'batches'),
      onEpoch: ({ epoch, epochs, loss, seconds }) => console.log(`epoch ${epoch + 1}/${epochs}: loss ${loss.toFixed(4)}, ${seconds.toFixed(1)} s (ETA ${fmtTime(seconds * (epochs - epoch - 1))})`),
    });
    const { testHits: _, ...summary } = result;
    await writeFileAtomic(join(o.out, 'result.json'), JSON.stringify({ ...summary, strategy: o.strategy, t: t[0], testImages: { dataset: test.datasetName, seed: o.seed, indices: test.indices }, feedbackBlocks: wiring.feedbackBlocks, feedbackTargets: wiring.targets, featureBlock: wiring.featureBlock }, null, 2));
    console.log(`difeed (${o.strategy}): top-1 ${(100 * result.top1).toFixed(2)}%, top-5 ${(100 * result.top5).toFixed(2)}% (${result.params} parameters, ${fmtTime(result.seconds)}) → ${join(o.out, 'result.json')}`);
    e.dispose();
  } finally {
    await lock.release();
  }
  return 0;
}

const KNN = {
  train: { type: 'string', meta: 'DIR', required: true, help: 'feature cache of the training split' },
  test: { type: 'string', meta: 'DIR', required: true, help: 'feature cache of the test split' },
  t: { type: 'int', min: 0, max: T_MAX, help: 'timestep', default: 150 },
  b: { type: 'int', min: 1, help: 'block (default: the paper\'s b24, mapped by role onto the cache\'s U-Net)' },
  pool: { type: 'int', min: 0, max: 1024, help: 'adaptive-average-pool cached maps to this size before comparing (0 = as cached; default 1, the paper\'s global pooling of Table 9, on U-Net features, 0 on a pixel cache, whose grey image pooled to 1 would be one value)' },
  k: { type: 'ints', min: 1, max: 100_000, unique: true, help: 'neighbour counts', default: [20, 200] },
  temperature: { type: 'number', above: 0, max: 1e6, help: 'vote weight exp(s / T)', default: 0.1 },
  standardize: { type: 'flag', help: 'standardise every (pooled) feature dimension with the training split\'s mean and std before the cosine similarity' },
  classes: { type: 'int', min: 2, max: 100_000, help: 'number of classes (default: as many as the training cache records, else 10)' },
  out: { type: 'string', meta: 'FILE', help: 'result JSON file' },
} satisfies OptionSpecs;

async function knnCommand(argv: string[]): Promise<number> {
  const o = parseArgs('knn', argv, KNN);
  if (!o) return 0;
  if (o.out) await checkOutputFile('knn', 'out', o.out, cachesRead(o));
  const pixels = await pixelCaches(o.train, o.test, argv);
  const [t, b] = pixels ? [0, PIXEL_BLOCK] : [o.t, o.b ?? (await paperBlocksOf('knn', o.train)).feature];
  const pool = o.pool ?? (pixels ? 0 : 1);
  const loaded = { train: await loadCachedFeatures(o.train, [t], [b], pool), test: await loadCachedFeatures(o.test, [t], [b], pool) };
  warnIf(checkTrainTestCaches(loaded.train, loaded.test, o.train, o.test));
  const classes = splitClasses(loaded.train, loaded.test, o.classes, o.train, o.test);
  const splits = o.standardize ? standardizeSplits(loaded.train, loaded.test) : { ...loaded, warning: undefined };
  warnIf(splits.warning);
  const matrix = (f: FeatureArrays) => {
    const { data } = f.features.get(featureKey(t, b))!;
    return { m: { data, n: f.count, d: data.length / f.count }, labels: Array.from(f.labels) };
  };
  const tr = matrix(splits.train);
  const te = matrix(splits.test);
  const tooMany = o.k.find((k) => k > tr.m.n);
  if (tooMany !== undefined) throw new UsageError(`difrep knn: --k ${tooMany} is more than the ${tr.m.n} training images in ${o.train}`);
  const e = await tunedEngine();
  const res = await knnClassify(e, tr.m, tr.labels, te.m, te.labels, { ks: o.k, temperature: o.temperature, classes });
  for (const r of res) console.log(`kNN k=${r.k}: top-1 ${(100 * r.top1).toFixed(2)}%, top-5 ${top5Text(r.top5, classes)}`);
  // At any k a query's neighbours may span fewer than five classes (not only at k < 5).
  if (classes > 5) console.log(`(kNN's top-5 ranks only the classes with a neighbour among the k, fewer than five where the neighbours span fewer; the reference code fills the rest with classes no neighbour voted for)`);
  if (o.out) await writeFileAtomic(o.out, JSON.stringify({ features: pixels ? 'pixels' : 'unet', train: o.train, test: o.test, classes, t, b, pool, standardize: o.standardize, temperature: o.temperature, top5Ranks: classes <= 5 ? 'every class (each of 5 or fewer is in the top 5)' : 'classes with a neighbour among the k (the reference ranks every class)', results: res }, null, 2));
  e.dispose();
  return 0;
}

const CKA = {
  features: { type: 'string', meta: 'DIR', required: true, help: 'feature cache holding every compared t × b' },
  t: { type: 'ints', min: 0, max: T_MAX, unique: true, help: 'timesteps (several: compare timesteps at one block)', default: [90] },
  b: { type: 'ints', min: 1, unique: true, help: 'blocks (several: compare blocks at one timestep; default with several --t: the paper\'s b24, mapped by role onto the cache\'s U-Net)' },
  pool: { type: 'int', min: 0, max: 1024, help: 'one adaptive pooling for every compared set (0 = as cached)', default: 0 },
  out: { type: 'string', meta: 'FILE', required: true, help: 'JSON file for the matrix' },
  png: { type: 'string', meta: 'FILE.png', help: 'heatmap, as FILE.png and FILE.svg' },
} satisfies OptionSpecs;

async function ckaCommand(argv: string[]): Promise<number> {
  const o = parseArgs('cka', argv, CKA);
  if (!o) return 0;
  const keep = [{ path: o.features, what: 'the feature cache --features reads' }];
  await checkOutputFile('cka', 'out', o.out, keep);
  if (o.png) await checkChartOutput('cka', 'png', o.png, [...keep, { path: o.out, what: 'the matrix JSON --out names' }]);
  const ts = o.t;
  // The paper's Figure 5 compares timesteps at b24; blocks have no such default (which ones?).
  if (!o.b && ts.length === 1) throw new UsageError('difrep cka: give the blocks to compare (--b 6,12,18,24,…), or several timesteps (--t 10,90,150,…) to compare at the paper\'s b24');
  const bs = o.b ?? [(await paperBlocksOf('cka', o.features)).feature];
  if (ts.length > 1 && bs.length > 1) throw new UsageError('difrep cka: compare several blocks at one t, or several t at one block');
  const pairs = ts.length > 1 ? ts.map((t) => [t, bs[0]]) : bs.map((b) => [ts[0], b]);
  const labels = ts.length > 1 ? ts.map((t) => `t${t}`) : bs.map((b) => `b${b}`);
  const cached = await loadCachedFeatures(o.features, ts, bs, o.pool);
  const sets = pairs.map(([t, b]) => {
    const { data } = cached.features.get(featureKey(t, b))!;
    return { data, n: cached.count, d: data.length / cached.count };
  });
  const e = await tunedEngine();
  const m = await ckaMatrix(e, sets, pairs.map(([t, b]) => `t${t} b${b}`));
  // Linear CKA is biased up when features are many against the images: for independent isotropic
  // features it is about √(d₁d₂ / ((n + d₁)(n + d₂))) (1 at n = 2), which this run's sizes imply.
  const n = cached.count;
  const dims = sets.map((s) => s.d);
  const unrelated = Math.max(...dims.flatMap((a, i) => dims.slice(i + 1).map((b) => Math.sqrt((a * b) / ((n + a) * (n + b))))));
  if (unrelated > 0.5) warnIf(`warning: ${n} images of ${Math.min(...dims)}–${Math.max(...dims)} values each: linear CKA of unrelated features would read about ${unrelated.toFixed(2)} at these sizes (independent isotropic ones), so high values here say little; pool the maps smaller (--pool) or compare more images`);
  const held = ts.length > 1 ? `b${bs[0]}` : `t${ts[0]}`;
  await writeFileAtomic(o.out, JSON.stringify({ features: o.features, labels, timesteps: ts, blocks: bs, matrix: m, images: n, pool: o.pool, dims }, null, 2));
  if (o.png) await writeChart(o.png, heatmapSvg(m, labels, labels, `linear CKA at ${held}, ${n} images`));
  console.log(`linear CKA at ${held} over ${n} images:\n${labels.map((l, i) => `${l.padStart(6)} ${m[i].map((v) => v.toFixed(3)).join(' ')}`).join('\n')}`);
  e.dispose();
  return 0;
}

const SWEEP = {
  train: { type: 'string', meta: 'DIR', required: true, help: 'feature cache of the training split, with full (or large) maps' },
  test: { type: 'string', meta: 'DIR', required: true, help: 'feature cache of the test split' },
  t: { type: 'ints', min: 0, max: T_MAX, unique: true, help: 'timesteps', default: [150] },
  b: { type: 'ints', min: 1, unique: true, help: 'blocks (required, except for a pixel cache)' },
  pool: { type: 'ints', min: 1, max: 1024, unique: true, help: 'linear-probe pool sizes (on a raw-pixel cache, without --pool: these and the whole image)', default: [1, 2, 4] },
  standardize: { type: 'string', choices: ['off', 'on', 'both'], help: 'standardise the pooled features with the training split\'s statistics', default: 'off' },
  epochs: { type: 'int', min: 1, max: 100_000, help: 'epochs per probe', default: 15 },
  batch: { type: 'int', min: 1, max: 65_536, help: 'batch size', default: 128 },
  lr: { type: 'number', above: 0, max: 10, help: 'Adam learning rate', default: 1e-3 },
  classes: { type: 'int', min: 2, max: 100_000, help: 'number of classes (default: as many as the training cache records, else 10)' },
  out: { type: 'string', meta: 'DIR', required: true, help: 'output directory for sweep.json and one heatmap per pool size' },
} satisfies OptionSpecs;

/** Linear-probe accuracy over a grid of b × t × pool (the paper's Figures 3–4). */
async function sweepCommand(argv: string[]): Promise<number> {
  const o = parseArgs('sweep', argv, SWEEP);
  if (!o) return 0;
  await checkOutputFolder('sweep', 'out', o.out, cachesRead(o));
  const pixels = await pixelCaches(o.train, o.test, argv);
  if (!pixels && !o.b) throw new UsageError('difrep sweep: --b is required');
  // The pixel baseline's grid includes the whole image (the demo's does too).
  const pools = pixels && !given(argv, 'pool') ? [...new Set([...o.pool, await pixelSize(o.train)])] : o.pool;
  const [ts, bs] = pixels ? [[0], [PIXEL_BLOCK]] : [o.t, o.b!];
  const train = await loadCachedFeatures(o.train, ts, bs);
  const test = await loadCachedFeatures(o.test, ts, bs);
  warnIf(checkTrainTestCaches(train, test, o.train, o.test));
  const classes = splitClasses(train, test, o.classes, o.train, o.test);
  const e = await tunedEngine();
  const standardize = o.standardize === 'both' ? [false, true] : [o.standardize === 'on'];
  // The whole recipe, recorded in sweep.json (StepLR and seed as `train --head linear` defaults them).
  const recipe = { epochs: o.epochs, lr: o.lr, batch: o.batch, stepSize: 7, gamma: 0.1, seed: 0, classes };
  const rows = await sweepLinearProbes(e, train, test, {
    onWarning: warnIf, timesteps: ts, blocks: bs, pools, standardize, classes, epochs: o.epochs, batchSize: o.batch, lr: o.lr, stepSize: recipe.stepSize, gamma: recipe.gamma, seed: recipe.seed,
    onRow: (r) => console.log(`pool ${r.pool}${r.standardize ? ', standardised' : ''}, ${pixels ? 'pixels' : `b ${r.b}, t ${r.t}`}: top-1 ${(100 * r.top1).toFixed(2)}%`),
  });
  // Made once there are results: a sweep that fails (a NaN loss) leaves no empty folder behind.
  await mkdir(o.out, { recursive: true });
  const charts = await writeSweepHeatmaps(o.out, rows.map((r) => ({ ...r, value: r.top1 })), {
    title: (pool, std) => `linear probe top-1, pool ${pool}${std ? ', standardised' : ''}`, row: (b) => (pixels ? 'pixels' : `b${b}`), column: (t) => (pixels ? '' : `t${t}`),
  });
  await writeFileAtomic(join(o.out, 'sweep.json'), JSON.stringify({ train: o.train, test: o.test, features: pixels ? 'pixels' : 'unet', ...recipe, charts: charts.map((c) => basename(c)), rows }, null, 2));
  const { best, tied } = bestSweepRow(rows);
  // Chosen on the test split it is scored on: an optimistic number (the demo chooses on a validation split).
  console.log(`highest test top-1 of the grid: ${pixels ? 'pixels' : `b ${best.b}, t ${best.t}`}, pool ${best.pool}${best.standardize ? ', standardised' : ''}: ${(100 * best.top1).toFixed(2)}%${tied ? ` (tied with ${tied} other grid point${tied > 1 ? 's' : ''}; ties go to the lowest t, then block, pool, raw scale)` : ''} (picked on the test split itself, so optimistic; choose on a validation split for a fair score) → ${join(o.out, 'sweep.json')}`);
  e.dispose();
  return 0;
}

const EVAL = {
  run: { type: 'string', meta: 'DIR', required: true, help: 'a train --out directory (linear, attention or difformer head)' },
  features: { type: 'string', meta: 'DIR', required: true, help: 'feature cache of the split to score, of the kind the head was trained on' },
  out: { type: 'string', meta: 'FILE', help: 'result JSON (default <run>/eval-<features dir name>.json)' },
  png: { type: 'string', meta: 'FILE.png', help: 'confusion matrix heatmap as FILE.png and FILE.svg (rows: true class, columns: predicted; each row sums to 1)' },
} satisfies OptionSpecs;

/** Scores a trained head on any split: top-1/top-5, accuracy per class, confusion matrix. */
async function evalCommand(argv: string[]): Promise<number> {
  const o = parseArgs('eval', argv, EVAL);
  if (!o) return 0;
  const state = join(o.run, 'state.safetensors');
  // The default report goes into --run: a mistyped --run is named as such, not as a missing output folder.
  if (!o.out && !(await stat(o.run).catch(() => undefined))?.isDirectory()) throw new UsageError(`difrep eval: --run ${o.run} is not a folder: give the --out folder of a \`difrep train\` run`);
  const out = o.out ?? join(o.run, `eval-${basename(resolve(o.features))}.json`);
  if (!o.out) {
    // The default name comes from the cache folder's name alone: …/a/test and …/b/test share it.
    const earlier = (await readFile(out, 'utf8').then(JSON.parse).catch(() => undefined)) as { features?: string } | undefined;
    // Reports record absolute paths: a relative one (earlier reports) resolves from wherever eval runs
    // now, so another folder's ./test looked like the same cache and its report was replaced.
    if (earlier?.features !== undefined && resolve(earlier.features) !== resolve(o.features)) throw new UsageError(`difrep eval: ${out} holds the report of another feature cache (${earlier.features}); give --out to keep both`);
  }
  const keep = [
    { path: state, what: 'the trained head in --run' },
    { path: join(o.run, 'result.json'), what: 'the training result in --run' },
    { path: o.features, what: 'the feature cache --features reads' },
  ];
  await checkOutputFile('eval', 'out', out, keep);
  if (o.png) await checkChartOutput('eval', 'png', o.png, [...keep, { path: out, what: 'the report JSON --out names' }]);
  if (!(await stat(state).catch(() => undefined))?.isFile()) throw new UsageError(`difrep eval: ${o.run} holds no trained head (${state}): give the --out folder of a \`difrep train\` run`);
  const settings = await readStateSettings(state);
  const { timesteps, blocks, pool, head } = settings as { timesteps: number[]; blocks: number[]; pool: number | null; head: string };
  // DifFeed (evaluated by its own training run: its result.json) and pretraining states hold no head over cached features.
  if ((head !== 'linear' && head !== 'attention') || !Array.isArray(timesteps) || !Array.isArray(blocks)) {
    const what = head === 'difeed' ? 'a DifFeed head (it needs the U-Net live: its score is in the run\'s result.json)' : head === undefined ? 'no head (a pretraining run?)' : `a ${JSON.stringify(head)} head`;
    throw new UsageError(`difrep eval: ${o.run} holds ${what}; eval scores linear, attention and difformer heads trained on feature caches`);
  }
  // The report names the state it scored: a stopped or running run's state is not its last epoch.
  const progress = await readStateProgress(state);
  const stateTime = (await stat(state)).mtimeMs;
  const finished = await stat(join(o.run, 'result.json')).then((r) => r.mtimeMs >= stateTime, () => false);
  if (!finished) warnIf(`${o.run} has no result.json newer than its state: its training has not finished (stopped, or still running); scoring the state saved after ${progress.epochs} epochs${progress.batches ? ` and ${progress.batches} batches of epoch ${progress.epochs + 1}` : ''} (${progress.steps} steps)`);
  const data = (settings.data ?? {}) as { features?: string; train?: string; trainCache?: CacheSignature; standardize?: boolean };
  const pixels = await isPixelCache(o.features);
  if (pixels !== (data.features === 'pixels')) throw new UsageError(`difrep eval: ${o.run} was trained on ${data.features === 'pixels' ? 'raw pixels' : 'U-Net features'}, but ${o.features} holds ${pixels ? 'raw pixels' : 'U-Net features'}`);
  // Pooled here, on the CPU, where pooling only shrinks and pooled maps pool again only exactly.
  const loaded = await loadCachedFeatures(o.features, timesteps, blocks, pool ?? 0);
  let split: FeatureArrays = loaded;
  const recorded = data.trainCache;
  if (recorded) {
    checkSameExtraction(recorded, loaded.signature, data.train ?? 'the training cache', o.features);
    // Scores on the head's own training images say how well it fits, not how well it generalises.
    if (!data.standardize) warnIf(sameSplitWarning(recorded, loaded.signature, data.train ?? 'the training cache', o.features));
  }
  if (data.standardize) {
    // The head saw features standardised with its training split's statistics: recompute them from that cache.
    if (!data.train) throw new UsageError(`difrep eval: ${o.run} was trained on standardised features but records no training cache`);
    const train = await loadCachedFeatures(data.train, timesteps, blocks, pool ?? 0).catch((err: Error) => {
      throw new Error(`${o.run} was trained on standardised features, whose statistics come from its training cache ${data.train}, which cannot be read: ${err.message}; put that cache back at that path (a moved cache: a symbolic link there will do)`);
    });
    const changed = recorded ? signatureDifferences(recorded, train.signature) : [];
    if (changed.length) {
      throw new Error(`${data.train} no longer holds the features ${o.run} was trained on (${changed.join(', ')}), and the head's standardisation statistics come from them: extract that cache again as it was, or train the head again`);
    }
    warnIf(checkTrainTestCaches(train, loaded, data.train, o.features));
    split = standardizeSplits(train, loaded).test;
  } else if (!recorded && data.train && existsSync(data.train)) {
    checkSameExtraction((await openFeatureCache(data.train, { verifyAll: false, writeManifest: false })).signature, loaded.signature, data.train, o.features);
  }
  const e = await tunedEngine();
  const { logits, classes } = await trainedHeadLogits(e, state, split);
  checkLabels(split, classes, o.features, o.run);
  const report = classificationReport(logits, split.labels, classes);
  await writeFileAtomic(out, JSON.stringify({ run: resolve(o.run), features: resolve(o.features), head, timesteps, blocks, pool, standardize: !!data.standardize, state: { ...progress, finished }, ...report }, null, 2));
  if (o.png) {
    const rows = report.confusion.map((row) => row.map((v) => v / Math.max(1, row.reduce((p, x) => p + x, 0))));
    await writeChart(o.png, heatmapSvg(rows, rows.map((_, c) => String(c)), rows.map((_, c) => String(c)), 'confusion (rows: true class, columns: predicted)'));
  }
  const perClass = report.perClass.map((a, c) => `${c}: ${a === null ? '-' : `${(100 * a).toFixed(1)}%`}`).join(', ');
  console.log(`${o.features}: ${report.images} images, top-1 ${(100 * report.top1).toFixed(2)}%, top-5 ${top5Text(report.top5, classes)}\nper class: ${perClass}\n→ ${out}`);
  e.dispose();
  return 0;
}

const MERGE = {
  features: { type: 'string', meta: 'DIR', required: true, help: 'feature cache directory written by one or more extract shards' },
} satisfies OptionSpecs;

/** Checks that every shard's chunks are present and consistent, and writes manifest.json. */
async function mergeCommand(argv: string[]): Promise<number> {
  const o = parseArgs('merge', argv, MERGE);
  if (!o) return 0;
  const cache = await openFeatureCache(o.features);
  console.log(`${o.features}: complete, ${cache.count} images; manifest.json written`);
  return 0;
}

export const EXPERIMENT_COMMANDS: Record<string, (argv: string[]) => Promise<number>> = {
  extract: extractCommand,
  train: trainCommand,
  knn: knnCommand,
  cka: ckaCommand,
  sweep: sweepCommand,
  merge: mergeCommand,
  eval: evalCommand,
};
