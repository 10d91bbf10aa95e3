// Trains a head on cached features with the paper's recipe (Adam, StepLR(7, 0.1), 28 epochs by
// default), checkpointing every epoch so a killed run resumes exactly, and evaluates top-1/top-5.
import type { Engine } from '../engine/engine.ts';
import { scale } from '../engine/ops/elementwise.ts';
import { concatRows } from '../engine/ops/layout.ts';
import { crossEntropy } from '../engine/ops/nn.ts';
import type { Tensor } from '../engine/tensor.ts';
import { ATTENTION_HEAD_DEFAULTS, AttentionHead, type AttentionHeadOptions } from '../model/heads/attention-head.ts';
import { LinearProbe } from '../model/heads/linear-probe.ts';
import { openSafetensors } from '../model/checkpoint/safetensors.ts';
import { readFinite } from '../model/checkpoint/tensor-source.ts';
import { poolCached } from './cached-features.ts';
import { checkEpochs, readRunSettings, type RunSettings, savedPartialEpoch, saveTrainingState, startOrResume } from './checkpoint.ts';
import { batchesPerEpoch, epochBatches } from './epoch-batches.ts';
import { checkClassLabels, countTopK } from './eval/classification.ts';
import { featureKey } from './feature-key.ts';
import { assertFiniteLogits } from './finite.ts';
import { Adam, type Optimizer, Sgd, StepLR } from './optimizer.ts';
import { StepLosses } from './step-losses.ts';
import { partRanges, trainStepKeepingLoss } from './train-step.ts';

/** One t × b's per-image features [count, ...shape]; sourceSize: the maps' size before they were pooled, if they were. */
export interface FeatureMaps {
  data: Float32Array;
  shape: number[];
  sourceSize?: number;
}

export interface FeatureArrays {
  /** key `t<t>.b<b>` → per-image features [count, ...shape]. */
  features: Map<string, FeatureMaps>;
  labels: ArrayLike<number>;
  count: number;
}

export type HeadKind = 'linear' | 'attention' | 'difeed';

export interface FitOptions {
  head: HeadKind;
  classes: number;
  /** Timesteps and blocks fed to the head (linear: exactly one of each). */
  timesteps: number[];
  blocks: number[];
  pool?: number;
  attention?: Partial<AttentionHeadOptions>;
  epochs?: number;
  batchSize?: number;
  optimizer?: 'adam' | 'sgd';
  lr?: number;
  stepSize?: number;
  gamma?: number;
  seed?: number;
  /** What the features are (caches, standardisation, …): recorded with the run's settings, so a resumed run must use the same. */
  data?: Record<string, unknown>;
  /** Training state file, written after every epoch and every checkpointEverySeconds within one; with `resume`, training continues from it. */
  checkpoint?: string;
  /** Seconds between saves within an epoch (default 300); a resume continues at the next batch. */
  checkpointEverySeconds?: number;
  resume?: boolean;
  /** With resume: the line saying which state continues (or that none is saved yet), once its checks pass. */
  onResume?: (line: string) => void;
  onEpoch?: (info: { epoch: number; epochs: number; loss: number; trainAccuracy: number; lr: number; seconds: number }) => void;
  onBatch?: (done: number, total: number) => void;
}

export interface FitResult {
  head: HeadKind;
  epochs: number;
  optimizer: string;
  lr: number;
  batchSize: number;
  params: number;
  losses: number[];
  top1: number;
  top5: number;
  /** 1 where a test image's top-1 was right: two heads scored on the same images compare image by image. */
  testHits: Uint8Array;
  /** Everything the run was set up with, as its training state records it (result.json repeats it). */
  settings: Record<string, unknown>;
  /** Wall time of the whole run, a resumed one's earlier saved epochs included. */
  seconds: number;
}

interface Model {
  params: Map<string, Tensor>;
  logits(batch: Map<string, Tensor>): Tensor;
  /** The most images one call of logits may take: what the head's bindings hold (a larger batch runs in parts). */
  part: number;
}

function buildModel(e: Engine, data: FeatureArrays, o: FitOptions): Model {
  const first = data.features.get(featureKey(o.timesteps[0], o.blocks[0]));
  if (!first) throw new Error(`no cached features for t=${o.timesteps[0]}, b=${o.blocks[0]}`);
  if (o.head === 'linear') {
    if (o.timesteps.length !== 1 || o.blocks.length !== 1) throw new Error('a linear probe reads exactly one t and one b');
    // Its weight [C·s², classes] binds whole; a batch binds its features [n, C, s, s] (pooled
    // already: prePooled), so a batch more than one binding holds runs in parts (a batch of 128
    // maps of [512, 32, 32] needs 256 MiB, twice lavapipe's binding).
    const inFeatures = first.shape.reduce((p, d) => p * d, 1);
    const perImage = 4 * inFeatures;
    const weightBytes = perImage * o.classes;
    if (weightBytes > e.maxBindingBytes) {
      throw new RangeError(`linear probe: its weight [${o.classes}, ${inFeatures}] binds ${weightBytes} bytes, over this device's largest storage binding (${e.maxBindingBytes}): give a smaller --pool`);
    }
    const probe = LinearProbe.create(e, { channels: first.shape[0], classes: o.classes, pool: o.pool ?? 2 }, o.seed ?? 0);
    return { params: probe.params, logits: (batch) => probe.forward(batch.get(featureKey(o.timesteps[0], o.blocks[0]))!), part: e.perBinding(perImage) };
  }
  const blocks = o.blocks.map((b) => {
    const s = data.features.get(featureKey(o.timesteps[0], b))!.shape;
    return { b, channels: s[0], size: s[1] };
  });
  const options = { ...o.attention, blocks, timesteps: o.timesteps, classes: o.classes };
  AttentionHead.checkSize(e, options);
  // The head binds its attention weights and MLP for the images it is given: at the paper's defaults
  // (d 1024, 8 heads, 257 tokens) a batch of 128 binds 539 MB in the MLP's hidden layer (270 MB of
  // attention weights), so a batch runs in parts of what one binding holds (the released code's 128
  // are 4 GPUs × 32, its gradients averaged alike); one image must fit.
  const perImage = AttentionHead.bytesPerImage(options);
  if (perImage > e.maxBindingBytes) {
    throw new RangeError(`attention head: one image binds ${perImage} bytes (its attention weights or MLP), over this device's largest storage binding (${e.maxBindingBytes}): give a smaller --dim or --pre-pool`);
  }
  const head = AttentionHead.create(e, options, o.seed ?? 0);
  return {
    params: head.params,
    logits: (batch) => head.forward(new Map(o.timesteps.map((t) => [t, new Map(o.blocks.map((b) => [b, batch.get(featureKey(t, b))!]))]))),
    part: e.perBinding(perImage),
  };
}

/**
 * Both heads begin with a parameter-free adaptive average pool (the linear probe's to its pool
 * size, the attention tokenizer's to at most prePoolSize): pooling the cached features once, on
 * the CPU, is the same computation, and each step then uploads s² values per channel, not H·W.
 */
function prePooled(data: FeatureArrays, keys: string[], o: Pick<FitOptions, 'head' | 'pool' | 'attention'>, scoring = false): FeatureArrays {
  const features = new Map(data.features);
  for (const k of keys) {
    const f = data.features.get(k);
    if (!f || f.shape.length !== 3 || f.shape[1] !== f.shape[2]) continue;
    // The tokenizer pools the U-Net's own map to min(H, prePoolSize): maps pooled below that at
    // extraction would give it fewer tokens (and another LayerNorm shape) under the same settings.
    const full = f.sourceSize ?? f.shape[1];
    const tokens = Math.min(full, o.attention?.prePoolSize ?? ATTENTION_HEAD_DEFAULTS.prePoolSize);
    if (o.head !== 'linear' && f.shape[1] < tokens) {
      const fix = scoring
        ? `this head was trained on ${tokens}×${tokens} tokens: score it on a cache extracted with --pool 0 (or at least ${tokens})`
        : `extract them with --pool 0 (or at least ${tokens}), or give --pre-pool ${f.shape[1]}`;
      throw new RangeError(`features ${k}: these ${f.shape[1]}×${f.shape[1]} maps were pooled from ${full}×${full} at extraction, but the attention tokenizer pools to ${tokens}×${tokens}: ${fix}`);
    }
    try {
      features.set(k, poolCached(f, data.count, headMapSize(o, f.shape[1])));
    } catch (err) {
      throw err instanceof RangeError ? new RangeError(`features ${k}: ${err.message} (the head's pool), or extract these features with another --pool (0 keeps the full maps)`) : err;
    }
  }
  return { ...data, features };
}

function gather(e: Engine, data: FeatureArrays, keys: string[], idx: number[]): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const k of keys) {
    const f = data.features.get(k)!;
    const per = f.shape.reduce((p, d) => p * d, 1);
    const buf = new Float32Array(idx.length * per);
    idx.forEach((i, n) => buf.set(f.data.subarray(i * per, (i + 1) * per), n * per));
    out.set(k, e.tensor(buf, [idx.length, ...f.shape], k));
  }
  return out;
}

/** The logits of `model` for every image of `data` ([count, classes]), checked to be finite. */
async function predict(e: Engine, model: Model, data: FeatureArrays, keys: string[], batchSize: number): Promise<Float32Array> {
  const parts: Float32Array[] = [];
  for (let s = 0; s < data.count; s += batchSize) {
    const idx = Array.from({ length: Math.min(batchSize, data.count - s) }, (_, i) => s + i);
    const logits = await e.noGrad(() => e.tidy(() => model.logits(gather(e, data, keys, idx)))).readAndDispose();
    assertFiniteLogits(logits, logits.length / idx.length, (row) => `evaluation: the logits of image ${s + row}`);
    parts.push(logits);
  }
  const out = new Float32Array(parts.reduce((p, a) => p + a.length, 0));
  parts.reduce((at, a) => (out.set(a, at), at + a.length), 0);
  return out;
}

/** Top-1 and top-5 accuracy of `model` on `data`. */
async function evaluate(e: Engine, model: Model, data: FeatureArrays, keys: string[], batchSize: number): Promise<{ top1: number; top5: number; testHits: Uint8Array }> {
  const c = countTopK(await predict(e, model, data, keys, batchSize), Array.from({ length: data.count }, (_, i) => data.labels[i]));
  return { top1: c.top1 / data.count, top5: c.top5 / data.count, testHits: c.hits };
}

/** The size a head pools an h × h map to: the linear probe's pool, the attention tokenizer's at most prePoolSize. */
function headMapSize(o: Pick<FitOptions, 'head' | 'pool' | 'attention'>, h: number): number {
  return o.head === 'linear' ? (o.pool ?? 2) : Math.min(h, o.attention?.prePoolSize ?? ATTENTION_HEAD_DEFAULTS.prePoolSize);
}

/**
 * The logits on `data` of a head that `fitHead` trained, rebuilt from its training state: the
 * settings it records and its weights (shapes and finiteness checked).
 */
export async function trainedHeadLogits(e: Engine, statePath: string, data: FeatureArrays): Promise<{ logits: Float32Array; classes: number; settings: RunSettings }> {
  const src = await openSafetensors(statePath);
  try {
    const settings = readRunSettings(statePath, src.metadata);
    if (settings.head !== 'linear' && settings.head !== 'attention') throw new Error(`${statePath}: a ${String(settings.head)} state cannot be scored on cached features`);
    const o = settings as unknown as FitOptions;
    const keys = o.timesteps.flatMap((t) => o.blocks.map((b) => featureKey(t, b)));
    // The maps the head was trained on, pooled as fitHead pooled them (where that is exact), and of
    // the sizes it recorded: a cache pooled otherwise at extraction gave an attention head other tokens.
    data = prePooled(data, keys, o, true);
    const recorded = settings.inputShapes as Record<string, number[] | null> | undefined;
    for (const k of keys) {
      const [got, want] = [data.features.get(k)?.shape, recorded?.[k]];
      if (got && want && got.join() !== want.join()) {
        throw new Error(`${statePath}: the head read features ${k} as [${want}], these are [${got}] after its pooling: score a cache extracted with the --pool of its training cache (or 0)`);
      }
    }
    const model = buildModel(e, data, o);
    try {
      for (const [k, p] of model.params) {
        const info = src.info(`param.${k}`);
        if (!info) throw new Error(`${statePath}: parameter ${k} is missing`);
        if (info.shape.join() !== p.shape.join()) throw new Error(`${statePath}: parameter ${k} is [${info.shape}], but these features make it [${p.shape}]: score features of the kind the head was trained on`);
        e.writeBuffer(p.buffer, 0, await readFinite(src, `param.${k}`));
      }
      // In batches of at most what the head's bindings hold (an attention head's T × T weights).
      return { logits: await predict(e, model, data, keys, Math.min(Number(settings.batchSize) || 128, model.part)), classes: o.classes, settings };
    } finally {
      for (const p of model.params.values()) p.dispose();
    }
  } finally {
    await src.close();
  }
}

export async function fitHead(e: Engine, train: FeatureArrays, test: FeatureArrays, o: FitOptions): Promise<FitResult> {
  if (o.head === 'difeed') throw new Error('DifFeed needs the U-Net live, not cached features: use fitDifFeed (difrep train --head difeed)');
  checkClassLabels(train.labels, o.classes, 'training');
  checkClassLabels(test.labels, o.classes, 'test');
  const t0 = performance.now();
  const epochs = o.epochs ?? 28;
  const batchSize = o.batchSize ?? 128;
  const optName = o.optimizer ?? 'adam';
  const lr = o.lr ?? (optName === 'sgd' ? (o.head === 'linear' ? 1e-2 : 5e-2) : o.head === 'linear' ? 1e-3 : 1e-4);
  const keys = o.timesteps.flatMap((t) => o.blocks.map((b) => featureKey(t, b)));
  train = prePooled(train, keys, o);
  test = prePooled(test, keys, o);
  const model = buildModel(e, train, o);
  let made: Optimizer | undefined;
  // Freed however the run ends: a failed fit (a NaN loss, a refused resume or hyper-parameter) kept
  // them, and a caller retrying at a smaller batch piled them up.
  try {
    const optimizer: Optimizer = optName === 'sgd' ? new Sgd(e, model.params, lr) : new Adam(e, model.params, { lr });
    made = optimizer;
    const schedule = new StepLR(optimizer, lr, o.stepSize ?? 7, o.gamma ?? 0.1);
    const settings = {
      head: o.head, classes: o.classes, timesteps: o.timesteps, blocks: o.blocks, pool: o.head === 'linear' ? (o.pool ?? 2) : null, attention: o.head === 'linear' ? null : (o.attention ?? {}),
      optimizer: optName, lr, batchSize, stepSize: o.stepSize ?? 7, gamma: o.gamma ?? 0.1, seed: o.seed ?? 0, trainImages: train.count, data: o.data ?? null, dropLast: true,
      // What the head reads per image after pooling (an attention head's tokens: a cache pooled at extraction gives fewer).
      inputShapes: Object.fromEntries(keys.map((k) => [k, train.features.get(k)?.shape ?? null])),
    };
    const progress = await startOrResume(e, o.checkpoint, !!o.resume, settings, model.params, optimizer, o.onResume);
    // A state saved within an epoch records the batches of that epoch it had trained, their loss sum and hits.
    const partial = savedPartialEpoch(progress, o.checkpoint!, batchesPerEpoch(train.count, batchSize));
    checkEpochs(progress, epochs, o.checkpoint!);
    const startEpoch = progress ? (partial ? progress.epoch : progress.epoch + 1) : 0;
    const saveEvery = (o.checkpointEverySeconds ?? 300) * 1000;
    let lastSave = performance.now();
    const losses: number[] = progress ? JSON.parse(String(progress.losses ?? '[]')) : [];
    // Training time of the saved epochs of earlier runs: a resumed run reports the whole run's.
    const earlierSeconds = Number(progress?.seconds ?? 0);
    const seconds = () => earlierSeconds + (performance.now() - t0) / 1000;
    for (let epoch = startEpoch; epoch < epochs; epoch++) {
      const te = performance.now();
      schedule.setEpoch(epoch);
      const batches = epochBatches(train.count, batchSize, (o.seed ?? 0) * 1000 + epoch, `${o.head} head`);
      const batchesPerEpoch = batches.length;
      const steps = new StepLosses(e);
      try {
        const resumeAt = partial && epoch === startEpoch ? partial.batch : 0;
        if (resumeAt) [steps.weightedSum, steps.correct] = [partial!.lossSum, partial!.correct];
        for (const [bi, idx] of batches.entries()) {
          if (bi < resumeAt) continue;
          const labels = idx.map((i) => train.labels[i]);
          // A batch larger than the head's bindings hold trains in parts, each part's mean loss
          // weighted by its share: their gradients add up to the batch's.
          const parts = partRanges(idx.length, model.part);
          const logits: Tensor[] = [];
          const loss = await trainStepKeepingLoss(e, optimizer, parts.map(([s, end]) => () => {
            const l = crossEntropy(logits[logits.push(e.keep(model.logits(gather(e, train, keys, idx.slice(s, end))))) - 1], labels.slice(s, end));
            return parts.length === 1 ? l : scale(l, (end - s) / idx.length);
          })).catch((err) => {
            for (const l of logits) l.dispose();
            throw err;
          });
          const all = logits.length === 1 ? logits[0] : e.noGrad(() => concatRows(logits));
          if (logits.length > 1) for (const l of logits) l.dispose();
          await steps.add(loss, labels, `epoch ${epoch + 1}, batch ${bi + 1} (step ${optimizer.steps})`, all);
          o.onBatch?.(bi + 1, batchesPerEpoch);
          if (o.checkpoint && bi + 1 < batchesPerEpoch && performance.now() - lastSave >= saveEvery) {
            await steps.read();
            await saveTrainingState(o.checkpoint, model.params, optimizer, { epoch, batch: bi + 1, epochLoss: steps.weightedSum, epochCorrect: steps.correct, steps: optimizer.steps, losses: JSON.stringify(losses), seconds: seconds() }, settings);
            lastSave = performance.now();
          }
        }
        await steps.read();
      } finally {
        steps.dispose(); // what a failed step left unread
      }
      const seen = batchesPerEpoch * batchSize;
      const loss = steps.weightedSum / seen;
      const correct = steps.correct;
      losses.push(loss);
      if (o.checkpoint) {
        await saveTrainingState(o.checkpoint, model.params, optimizer, { epoch, steps: optimizer.steps, losses: JSON.stringify(losses), seconds: seconds() }, settings);
        lastSave = performance.now();
      }
      o.onEpoch?.({ epoch, epochs, loss, trainAccuracy: correct / seen, lr: optimizer.lr, seconds: (performance.now() - te) / 1000 });
    }
    const acc = await evaluate(e, model, test, keys, Math.min(batchSize, model.part));
    let params = 0;
    for (const p of model.params.values()) params += p.size;
    return { head: o.head, epochs, optimizer: optName, lr, batchSize, params, losses, ...acc, settings, seconds: seconds() };
  } finally {
    for (const p of model.params.values()) p.dispose();
    made?.dispose();
  }
}
