// difrep extract | train | knn | cka: the paper's experiments on Fashion-MNIST (or any dataset
// given as an ImageSource), from cached features.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createEngine } from '../engine/engine.ts';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { paperBlocks } from '../model/block-roles.ts';
import { balancedSubset, imageSource, loadFashionMnist } from '../train/data/fashion-mnist.ts';
import { ckaMatrix } from '../train/eval/cka.ts';
import { knnClassify } from '../train/eval/knn.ts';
import { extractFeatures, type ImageSource, openFeatureCache } from '../train/extract.ts';
import { DecodePool } from '../train/data/decode-pool.ts';
import { scanImageFolder, validateImageFolder } from '../train/data/image-folder.ts';
import { type FeatureArrays, fitHead } from '../train/fit.ts';
import { fitDifFeed } from '../train/fit-difeed.ts';
import type { DifFeedOptions } from '../model/heads/difeed.ts';
import { heatmapPng } from '../train/heatmap.ts';
import { int, numberList, type OptionSpec, type Parsed, parseArgs, UsageError } from './args.ts';
import { loadModel, MODEL_OPTIONS } from './model-options.ts';
import { fmtTime, progressBar } from './progress.ts';

/** --shard i/n, else Slurm job arrays (SLURM_ARRAY_TASK_ID/COUNT), else Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX + --shards). */
export function shardFrom(arg: string | undefined, shards: string | undefined, env: Record<string, string | undefined>): { index: number; count: number } | undefined {
  let index: number | undefined;
  let count: number | undefined;
  if (arg) {
    const m = /^(\d+)\/(\d+)$/.exec(arg);
    if (!m) throw new UsageError(`--shard must look like i/n (0-based), got ${arg}`);
    [index, count] = [Number(m[1]), Number(m[2])];
  } else if (env.SLURM_ARRAY_TASK_ID !== undefined && env.SLURM_ARRAY_TASK_COUNT !== undefined) {
    [index, count] = [Number(env.SLURM_ARRAY_TASK_ID) - Number(env.SLURM_ARRAY_TASK_MIN ?? 0), Number(env.SLURM_ARRAY_TASK_COUNT)];
  } else if (env.JOB_COMPLETION_INDEX !== undefined) {
    if (!shards) throw new UsageError('JOB_COMPLETION_INDEX is set: give the number of shards with --shards n');
    [index, count] = [Number(env.JOB_COMPLETION_INDEX), Number(shards)];
  }
  if (index === undefined || count === undefined) return undefined;
  if (!(count >= 1 && index >= 0 && index < count)) throw new UsageError(`shard ${index}/${count} is out of range`);
  return { index, count };
}

const EXTRACT: Record<string, OptionSpec> = {
  ...MODEL_OPTIONS,
  dataset: { help: 'fashion-mnist, or folder (an ImageFolder: --root DIR/<class>/<image>.png|jpg)', default: 'fashion-mnist' },
  root: { help: 'with --dataset folder: the image folder' },
  split: { help: 'fashion-mnist: train or test', default: 'train' },
  'per-class': { help: 'images per class (a seeded, class-balanced subset; 0 = the whole split)', default: '0' },
  t: { help: 'timesteps, comma-separated', default: '150' },
  b: { help: 'blocks, comma-separated (default: the paper\'s b24, mapped by role on other depths)' },
  pool: { help: 'adaptive-average-pool every map to this size (0 = keep full maps)', default: '0' },
  batch: { help: 'images per U-Net batch', default: '8' },
  chunk: { help: 'images per cache file', default: '256' },
  seed: { help: 'seed of the per-image noise and of the subset', default: '0' },
  shard: { help: 'this worker\'s share i/n (0-based); also read from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX' },
  shards: { help: 'number of shards for Kubernetes Indexed Jobs (with JOB_COMPLETION_INDEX)' },
  out: { help: 'output directory (required)' },
};

async function extractCommand(argv: string[]): Promise<number> {
  const o = parseArgs('extract', argv, EXTRACT);
  if (!o) return 0;
  if (!o.out) throw new UsageError('difrep extract: --out DIR is required');
  if (o.dataset !== 'fashion-mnist' && o.dataset !== 'folder') throw new UsageError(`--dataset ${o.dataset}: fashion-mnist or folder`);
  if (o.dataset === 'folder' && !o.root) throw new UsageError('--dataset folder needs --root DIR');
  if (o.dataset === 'fashion-mnist' && o.split !== 'train' && o.split !== 'test') throw new UsageError(`--split must be train or test, got ${o.split}`);
  const e = await createEngine();
  const { unet, flags, hash } = await loadModel(e, String(o.model), o.checkpoint as string | undefined);
  const blocks = numberList(o.b, 'b');
  const bs = blocks.length ? blocks : [paperBlocks(unet.plan).feature];
  const ts = numberList(o.t, 't');
  for (const b of bs) if (b < 1 || b > unet.numBlocks) throw new UsageError(`--b ${b}: this U-Net has blocks 1..${unet.numBlocks}`);
  for (const t of ts) if (!Number.isInteger(t) || t < 0 || t > 999) throw new UsageError(`--t ${t}: timesteps are integers 0..999`);
  const perClass = int(o['per-class'], 'per-class');
  const seed = int(o.seed, 'seed');
  const size = unet.plan.flags.image_size;
  let source: ImageSource;
  let datasetName: string;
  const closers: (() => Promise<void>)[] = [];
  if (o.dataset === 'folder') {
    const scanned = await scanImageFolder(String(o.root));
    for (const w of scanned.warnings) console.error(`difrep: warning: ${w}`);
    const { folder, skipped, imagesPerSecond } = await validateImageFolder(scanned, progressBar('decode', 'images'));
    for (const s of skipped) console.error(`difrep: warning: skipped unreadable image ${s}`);
    console.log(`decoded ${scanned.files.length} images at ${imagesPerSecond.toFixed(1)} images/s; ${skipped.length} unreadable skipped; classes: ${folder.classes.join(', ')}`);
    const idx = perClass ? balancedSubset(folder.labels, perClass, seed, folder.classes.length) : folder.files.map((_, i) => i);
    const pool = new DecodePool(2);
    closers.push(() => pool.close());
    source = { count: idx.length, labels: idx.map((i) => folder.labels[i]), images: async (sel) => (await pool.decode(sel.map((i) => folder.files[idx[i]]), size)).images };
    datasetName = `folder:${o.root}/per-class=${perClass}`;
  } else {
    const ds = await loadFashionMnist(o.split as 'train' | 'test');
    const idx = perClass ? balancedSubset(ds.labels, perClass, seed) : Array.from({ length: ds.count }, (_, i) => i);
    source = imageSource(ds, idx, size);
    datasetName = `fashion-mnist/${o.split}/per-class=${perClass}`;
  }
  await mkdir(String(o.out), { recursive: true });
  const t0 = performance.now();
  const written = await extractFeatures(e, unet, source, {
    outDir: String(o.out), timesteps: ts, blocks: bs, pool: int(o.pool, 'pool') || undefined, batchSize: int(o.batch, 'batch', 1), chunkSize: int(o.chunk, 'chunk', 1), seed,
    shard: shardFrom(o.shard as string | undefined, o.shards as string | undefined, process.env),
    provenance: { config: JSON.stringify(flags), checkpoint: hash, dataset: datasetName },
    onProgress: progressBar('extract', 'images'),
  });
  for (const close of closers) await close();
  const secs = (performance.now() - t0) / 1000;
  console.log(`extracted ${written} images (t ${ts}, b ${bs}) in ${fmtTime(secs)}: ${(written / secs).toFixed(2)} images/s → ${o.out}`);
  e.dispose();
  return 0;
}

/** Adaptive average pooling of cached per-image maps [C, H, W] to [C, p, p] on the CPU (PyTorch windows). */
export function poolCached(data: Float32Array, count: number, shape: number[], p: number): { data: Float32Array; shape: number[] } {
  if (!p || shape.length !== 3 || (shape[1] === p && shape[2] === p)) return { data, shape };
  const [C, H, W] = shape;
  const out = new Float32Array(count * C * p * p);
  for (let n = 0; n < count; n++) {
    for (let c = 0; c < C; c++) {
      const base = (n * C + c) * H * W;
      for (let i = 0; i < p; i++) {
        const r0 = Math.floor((i * H) / p);
        const r1 = Math.ceil(((i + 1) * H) / p);
        for (let j = 0; j < p; j++) {
          const c0 = Math.floor((j * W) / p);
          const c1 = Math.ceil(((j + 1) * W) / p);
          let s = 0;
          for (let r = r0; r < r1; r++) for (let q = c0; q < c1; q++) s += data[base + r * W + q];
          out[((n * C + c) * p + i) * p + j] = s / ((r1 - r0) * (c1 - c0));
        }
      }
    }
  }
  return { data: out, shape: [C, p, p] };
}

async function featureArrays(dir: string, ts: number[], bs: number[]): Promise<FeatureArrays> {
  const cache = await openFeatureCache(dir);
  const features = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const t of ts) for (const b of bs) features.set(`t${t}.b${b}`, await cache.features(t, b));
  return { features, labels: cache.labels, count: cache.count };
}

const TRAIN: Record<string, OptionSpec> = {
  train: { help: 'feature cache of the training split (required except for difeed)' },
  test: { help: 'feature cache of the test split (required except for difeed)' },
  head: { help: 'linear, attention, difformer, or difeed (trains from Fashion-MNIST images with the U-Net live)', default: 'linear' },
  ...MODEL_OPTIONS,
  strategy: { help: 'difeed: all, bottleneck, windowed or multi-scale', default: 'bottleneck' },
  'per-class': { help: 'difeed: training images per class', default: '10' },
  'test-per-class': { help: 'difeed: test images per class', default: '10' },
  flip: { help: 'difeed: random horizontal flips (seeded)', default: 'true' },
  t: { help: 'timesteps', default: '150' },
  b: { help: 'blocks (required; difeed: the pass-2 feature block, default the paper\'s b24 mapped by role)' },
  pool: { help: 'linear probe: adaptive pool size', default: '2' },
  dim: { help: 'attention heads: token width d', default: '1024' },
  layers: { help: 'attention heads: Transformer layers', default: '2' },
  heads: { help: 'attention heads: attention heads', default: '8' },
  'pre-pool': { help: 'attention heads: tokenizer pools larger maps to this size', default: '16' },
  classes: { help: 'number of classes', default: '10' },
  epochs: { help: 'epochs', default: '28' },
  batch: { help: 'batch size', default: '128' },
  optimizer: { help: 'adam (the paper) or sgd (the released scripts)', default: 'adam' },
  lr: { help: 'learning rate (default: 1e-3 linear / 1e-4 attention with Adam; 1e-2 / 5e-2 with SGD)' },
  'step-size': { help: 'StepLR step in epochs', default: '7' },
  gamma: { help: 'StepLR factor', default: '0.1' },
  seed: { help: 'initialisation and shuffling seed', default: '0' },
  out: { help: 'output directory for state.safetensors (every epoch) and result.json (required)' },
  resume: { help: 'continue from <out>/state.safetensors', flag: true },
};

async function trainCommand(argv: string[]): Promise<number> {
  const o = parseArgs('train', argv, TRAIN);
  if (!o) return 0;
  if (o.head === 'difeed') return trainDifFeed(o);
  for (const k of ['train', 'test', 'b', 'out']) if (!o[k]) throw new UsageError(`difrep train: --${k} is required`);
  const head = o.head === 'difformer' ? 'attention' : String(o.head);
  if (head !== 'linear' && head !== 'attention') throw new UsageError(`--head ${o.head}: linear, attention or difformer`);
  const ts = numberList(o.t, 't');
  const bs = numberList(o.b, 'b');
  const e = await createEngine();
  const train = await featureArrays(String(o.train), ts, bs);
  const test = await featureArrays(String(o.test), ts, bs);
  await mkdir(String(o.out), { recursive: true });
  const result = await fitHead(e, train, test, {
    head, classes: int(o.classes, 'classes', 2), timesteps: ts, blocks: bs, pool: int(o.pool, 'pool', 1),
    attention: { dim: int(o.dim, 'dim', 1), layers: int(o.layers, 'layers', 1), heads: int(o.heads, 'heads', 1), prePoolSize: int(o['pre-pool'], 'pre-pool', 1) },
    epochs: int(o.epochs, 'epochs', 1), batchSize: int(o.batch, 'batch', 1), optimizer: o.optimizer === 'sgd' ? 'sgd' : 'adam',
    lr: o.lr === undefined ? undefined : Number(o.lr), stepSize: int(o['step-size'], 'step-size', 1), gamma: Number(o.gamma), seed: int(o.seed, 'seed'),
    checkpoint: join(String(o.out), 'state.safetensors'), resume: !!o.resume,
    onBatch: progressBar('  batches', 'batches'),
    onEpoch: ({ epoch, epochs, loss, trainAccuracy, lr, seconds }) => console.log(`epoch ${epoch + 1}/${epochs}: loss ${loss.toFixed(4)}, train accuracy ${(100 * trainAccuracy).toFixed(1)}%, lr ${lr.toExponential(1)}, ${seconds.toFixed(1)} s (ETA ${fmtTime(seconds * (epochs - epoch - 1))})`),
  });
  const full = { ...result, headArg: o.head, timesteps: ts, blocks: bs, train: o.train, test: o.test };
  await writeFileAtomic(join(String(o.out), 'result.json'), JSON.stringify(full, null, 2));
  console.log(`${o.head}: top-1 ${(100 * result.top1).toFixed(2)}%, top-5 ${(100 * result.top5).toFixed(2)}% (${result.params} parameters, ${fmtTime(result.seconds)}) → ${join(String(o.out), 'result.json')}`);
  e.dispose();
  return 0;
}

async function trainDifFeed(o: Parsed): Promise<number> {
  if (!o.out) throw new UsageError('difrep train: --out is required');
  const strategy = String(o.strategy);
  if (!['all', 'bottleneck', 'windowed', 'multi-scale'].includes(strategy)) throw new UsageError(`--strategy ${strategy}: all, bottleneck, windowed or multi-scale`);
  const e = await createEngine();
  const { unet } = await loadModel(e, String(o.model), o.checkpoint as string | undefined);
  const size = unet.plan.flags.image_size;
  const seed = int(o.seed, 'seed');
  const source = async (split: 'train' | 'test', perClass: number) => {
    const ds = await loadFashionMnist(split);
    const idx = balancedSubset(ds.labels, perClass, seed + (split === 'test' ? 1 : 0));
    return imageSource(ds, idx, size);
  };
  const [t] = numberList(o.t, 't');
  const blocks = numberList(o.b, 'b');
  await mkdir(String(o.out), { recursive: true });
  const result = await fitDifFeed(e, unet, await source('train', int(o['per-class'], 'per-class', 1)), await source('test', int(o['test-per-class'], 'test-per-class', 1)), {
    classes: int(o.classes, 'classes', 2), strategy: strategy as DifFeedOptions['strategy'], t, featureBlock: blocks[0],
    head: { dim: int(o.dim, 'dim', 1), layers: int(o.layers, 'layers', 1), heads: int(o.heads, 'heads', 1), prePoolSize: int(o['pre-pool'], 'pre-pool', 1) },
    epochs: int(o.epochs, 'epochs', 1), batchSize: int(o.batch, 'batch', 1), headLr: o.lr === undefined ? undefined : Number(o.lr),
    stepSize: int(o['step-size'], 'step-size', 1), gamma: Number(o.gamma), seed, flip: o.flip !== 'false',
    checkpoint: join(String(o.out), 'state.safetensors'), resume: !!o.resume,
    onBatch: progressBar('  batches', 'batches'),
    onEpoch: ({ epoch, epochs, loss, seconds }) => console.log(`epoch ${epoch + 1}/${epochs}: loss ${loss.toFixed(4)}, ${seconds.toFixed(1)} s (ETA ${fmtTime(seconds * (epochs - epoch - 1))})`),
  });
  await writeFileAtomic(join(String(o.out), 'result.json'), JSON.stringify({ ...result, strategy, t }, null, 2));
  console.log(`difeed (${strategy}): top-1 ${(100 * result.top1).toFixed(2)}%, top-5 ${(100 * result.top5).toFixed(2)}% (${result.params} parameters, ${fmtTime(result.seconds)}) → ${join(String(o.out), 'result.json')}`);
  e.dispose();
  return 0;
}

const KNN: Record<string, OptionSpec> = {
  train: { help: 'feature cache of the training split (required)' },
  test: { help: 'feature cache of the test split (required)' },
  t: { help: 'timestep', default: '150' },
  b: { help: 'block', default: '24' },
  pool: { help: 'adaptive-average-pool cached maps to this size before comparing (paper Table 9: global, 1; 0 = as cached)', default: '1' },
  k: { help: 'neighbour counts', default: '20,200' },
  temperature: { help: 'vote weight exp(s / T)', default: '0.1' },
  classes: { help: 'number of classes', default: '10' },
  out: { help: 'result JSON file' },
};

async function knnCommand(argv: string[]): Promise<number> {
  const o = parseArgs('knn', argv, KNN);
  if (!o) return 0;
  for (const k of ['train', 'test']) if (!o[k]) throw new UsageError(`difrep knn: --${k} is required`);
  const [t] = numberList(o.t, 't');
  const [b] = numberList(o.b, 'b');
  const e = await createEngine();
  const load = async (dir: string) => {
    const c = await openFeatureCache(dir);
    const raw = await c.features(t, b);
    const f = poolCached(raw.data, c.count, raw.shape, int(o.pool, 'pool'));
    return { m: { data: f.data, n: c.count, d: f.data.length / c.count }, labels: Array.from(c.labels) };
  };
  const tr = await load(String(o.train));
  const te = await load(String(o.test));
  const res = await knnClassify(e, tr.m, tr.labels, te.m, te.labels, { ks: numberList(o.k, 'k'), temperature: Number(o.temperature), classes: int(o.classes, 'classes', 2) });
  for (const r of res) console.log(`kNN k=${r.k}: top-1 ${(100 * r.top1).toFixed(2)}%, top-5 ${(100 * r.top5).toFixed(2)}%`);
  if (o.out) await writeFileAtomic(String(o.out), JSON.stringify({ t, b, temperature: Number(o.temperature), results: res }, null, 2));
  e.dispose();
  return 0;
}

const CKA: Record<string, OptionSpec> = {
  features: { help: 'feature cache holding every compared t × b (required)' },
  t: { help: 'timesteps (several: compare timesteps at one block)', default: '90' },
  b: { help: 'blocks (several: compare blocks at one timestep) (required)' },
  pool: { help: 'one adaptive pooling for every compared set (0 = as cached)', default: '0' },
  out: { help: 'JSON file for the matrix (required)' },
  png: { help: 'PNG heatmap file' },
};

async function ckaCommand(argv: string[]): Promise<number> {
  const o = parseArgs('cka', argv, CKA);
  if (!o) return 0;
  for (const k of ['features', 'b', 'out']) if (!o[k]) throw new UsageError(`difrep cka: --${k} is required`);
  const ts = numberList(o.t, 't');
  const bs = numberList(o.b, 'b');
  if (ts.length > 1 && bs.length > 1) throw new UsageError('difrep cka: compare several blocks at one t, or several t at one block');
  const pairs = ts.length > 1 ? ts.map((t) => [t, bs[0]]) : bs.map((b) => [ts[0], b]);
  const labels = ts.length > 1 ? ts.map((t) => `t${t}`) : bs.map((b) => `b${b}`);
  const e = await createEngine();
  const cache = await openFeatureCache(String(o.features));
  const sets = [];
  for (const [t, b] of pairs) {
    const raw = await cache.features(t, b);
    const f = poolCached(raw.data, cache.count, raw.shape, int(o.pool, 'pool'));
    sets.push({ data: f.data, n: cache.count, d: f.data.length / cache.count });
  }
  const m = await ckaMatrix(e, sets);
  await writeFileAtomic(String(o.out), JSON.stringify({ labels, matrix: m, images: cache.count }, null, 2));
  if (o.png) await writeFileAtomic(String(o.png), heatmapPng(m, labels));
  console.log(`linear CKA over ${cache.count} images:\n${labels.map((l, i) => `${l.padStart(6)} ${m[i].map((v) => v.toFixed(3)).join(' ')}`).join('\n')}`);
  e.dispose();
  return 0;
}

const SWEEP: Record<string, OptionSpec> = {
  train: { help: 'feature cache of the training split, with full (or large) maps (required)' },
  test: { help: 'feature cache of the test split (required)' },
  t: { help: 'timesteps', default: '150' },
  b: { help: 'blocks (required)' },
  pool: { help: 'linear-probe pool sizes', default: '1,2,4' },
  epochs: { help: 'epochs per probe', default: '15' },
  batch: { help: 'batch size', default: '128' },
  lr: { help: 'Adam learning rate', default: '1e-3' },
  classes: { help: 'number of classes', default: '10' },
  out: { help: 'output directory for sweep.json and one heatmap per pool size (required)' },
};

/** Linear-probe accuracy over a grid of b × t × pool (the paper's Figures 3–4). */
async function sweepCommand(argv: string[]): Promise<number> {
  const o = parseArgs('sweep', argv, SWEEP);
  if (!o) return 0;
  for (const k of ['train', 'test', 'b', 'out']) if (!o[k]) throw new UsageError(`difrep sweep: --${k} is required`);
  const ts = numberList(o.t, 't');
  const bs = numberList(o.b, 'b');
  const pools = numberList(o.pool, 'pool');
  const e = await createEngine();
  const train = await featureArrays(String(o.train), ts, bs);
  const test = await featureArrays(String(o.test), ts, bs);
  await mkdir(String(o.out), { recursive: true });
  const rows: { t: number; b: number; pool: number; top1: number; top5: number }[] = [];
  for (const pool of pools) {
    const grid = bs.map(() => ts.map(() => 0));
    for (const [bi, b] of bs.entries()) {
      for (const [ti, t] of ts.entries()) {
        const one = (d: FeatureArrays): FeatureArrays => ({ ...d, features: new Map([[`t${t}.b${b}`, d.features.get(`t${t}.b${b}`)!]]) });
        const r = await fitHead(e, one(train), one(test), { head: 'linear', classes: int(o.classes, 'classes', 2), timesteps: [t], blocks: [b], pool, epochs: int(o.epochs, 'epochs', 1), batchSize: int(o.batch, 'batch', 1), lr: Number(o.lr) });
        rows.push({ t, b, pool, top1: r.top1, top5: r.top5 });
        grid[bi][ti] = r.top1;
        console.log(`pool ${pool}, b ${b}, t ${t}: top-1 ${(100 * r.top1).toFixed(2)}%`);
      }
    }
    await writeFileAtomic(join(String(o.out), `sweep-pool${pool}.png`), heatmapPng(grid, bs.map((b) => `b${b}`), ts.map((t) => `t${t}`)));
  }
  await writeFileAtomic(join(String(o.out), 'sweep.json'), JSON.stringify({ train: o.train, test: o.test, epochs: Number(o.epochs), rows }, null, 2));
  const best = rows.reduce((a, r) => (r.top1 > a.top1 ? r : a), rows[0]);
  console.log(`best: b ${best.b}, t ${best.t}, pool ${best.pool}: top-1 ${(100 * best.top1).toFixed(2)}% → ${join(String(o.out), 'sweep.json')}`);
  e.dispose();
  return 0;
}

/** Checks that every shard's chunks are present and consistent, and writes manifest.json. */
async function mergeCommand(argv: string[]): Promise<number> {
  const o = parseArgs('merge', argv, { features: { help: 'feature cache directory written by one or more extract shards (required)' } });
  if (!o) return 0;
  if (!o.features) throw new UsageError('difrep merge: --features DIR is required');
  const cache = await openFeatureCache(String(o.features));
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
};
