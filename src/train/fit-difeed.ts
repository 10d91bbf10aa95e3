// DifFeed trains from images with the U-Net live (its two passes cannot be cached): seeded
// per-image noise (fresh each epoch: a base hashed from seed and epoch, mixed before the image joins
// it), seeded horizontal flips, BatchNorm in train mode (or, after batchNormTrainEpochs, with its
// running statistics frozen, as the released code), Adam with the feedback layers at 1e-3 and the attention head at 1e-4
// (CLARIFICATIONS, issue 4), StepLR, a training state saved every epoch, and top-1/top-5 at the end.
import type { Engine } from '../engine/engine.ts';
import { hashSeeds } from '../engine/random.ts';
import { scale } from '../engine/ops/elementwise.ts';
import { sliceRows } from '../engine/ops/layout.ts';
import { crossEntropy } from '../engine/ops/nn.ts';
import type { Tensor } from '../engine/tensor.ts';
import { gaussianNoise, linearSchedule, qSample } from '../model/diffusion.ts';
import { AttentionHead } from '../model/heads/attention-head.ts';
import { DifFeed, type DifFeedOptions } from '../model/heads/difeed.ts';
import type { UNet } from '../model/unet.ts';
import { imagesPerChunk } from '../model/unet-bindings.ts';
import { checkEpochs, type SavedCount, savedPartialEpoch, saveTrainingState, startOrResume } from './checkpoint.ts';
import { batchesPerEpoch, epochBatches } from './epoch-batches.ts';
import type { ImageSource } from './extract.ts';
import { noiseSeed } from './noise-seed.ts';
import { assertFinite } from './finite.ts';
import { checkClassLabels, countTopK } from './eval/classification.ts';
import type { FeatureArrays, FitResult } from './fit.ts';
import { featureKey } from './feature-key.ts';
import { coinFlips, mirrorImages } from './flips.ts';
import { Adam, type Optimizer, OptimizerGroups, Sgd, StepLR } from './optimizer.ts';
import { StepLosses } from './step-losses.ts';
import { partRanges, trainStepKeepingLoss } from './train-step.ts';

export interface DifFeedFitOptions extends DifFeedOptions {
  epochs?: number;
  batchSize?: number;
  /** Batch of the test-set evaluation (no backward, so it may be larger; default batchSize). */
  evalBatchSize?: number;
  /**
   * Pass 1 of the evaluation, cached: the test images' features at t of the feedback blocks, from
   * an extraction with the same noise (testNoiseSeed) over the same image source; evaluation then
   * runs pass 2 only. The first batch is checked against a live pass 1.
   */
  testFirstPass?: FeatureArrays;
  /** Seed of the test images' noise (default `seed`); with testFirstPass, its extraction's extractionNoiseSeed. */
  testNoiseSeed?: number;
  /**
   * 'adam' (default: the paper's; feedback layers at 1e-3, the head at 1e-4) or 'sgd' (the released
   * scripts: plain SGD, both groups at 1e-2; diffssl finetune.py:39-41, scripts/feedback.sh).
   */
  optimizer?: 'adam' | 'sgd';
  feedbackLr?: number;
  headLr?: number;
  /**
   * Epochs whose feedback BatchNorm normalises with the batch's statistics (and updates its running
   * ones); later epochs train with the running statistics, frozen. Default: every epoch (the method
   * as the paper describes it). 7 reproduces the released code: its first evaluation, after epoch 7
   * (--eval_interval 7), leaves the model in eval mode for the rest of training
   * (diffssl finetune.py:85 calls model.train() once, before the epochs; test() calls model.eval()).
   */
  batchNormTrainEpochs?: number;
  stepSize?: number;
  gamma?: number;
  seed?: number;
  flip?: boolean;
  /**
   * What the frozen U-Net's weights are (a checkpoint's hash), recorded in the state with the
   * network's config: a resume on other weights would train the feedback and head on other features.
   */
  unetWeights?: string;
  checkpoint?: string;
  /**
   * With `checkpoint`: also save within an epoch, after the first batch that ends this many seconds
   * after the last save (default 300), so a stopped run loses minutes, not an epoch; a resumed run
   * continues at the next batch, exactly (order, flips and noise derive from seed, epoch and image).
   */
  checkpointEverySeconds?: number;
  resume?: boolean;
  /** With resume: the line saying which state continues (or that none is saved yet), once its checks pass. */
  onResume?: (line: string) => void;
  onEpoch?: (info: { epoch: number; epochs: number; loss: number; lr: number; seconds: number }) => void;
  onBatch?: (done: number, total: number) => void;
}

export async function fitDifFeed(e: Engine, unet: UNet, train: ImageSource, test: ImageSource, o: DifFeedFitOptions): Promise<FitResult> {
  const t0 = performance.now();
  const epochs = o.epochs ?? 28;
  const batchSize = o.batchSize ?? 16;
  const seed = o.seed ?? 0;
  checkClassLabels(train.labels, o.classes, 'training');
  checkClassLabels(test.labels, o.classes, 'test');
  AttentionHead.checkSize(e, DifFeed.headOptions(unet, o));
  const difeed = DifFeed.create(e, unet, o, seed);
  // The head binds its attention weights for the images it is given: a batch more than one binding
  // holds runs in parts (below), but one image's must fit.
  const perImage = AttentionHead.bytesPerImage(difeed.head.options);
  if (perImage > e.maxBindingBytes) {
    for (const t of difeed.params.values()) t.dispose();
    for (const t of difeed.head.params.values()) t.dispose();
    throw new RangeError(`DifFeed: its head binds ${perImage} bytes for one image (its attention weights or MLP), over this device's largest storage binding (${e.maxBindingBytes}): give a smaller --dim or --pre-pool`);
  }
  const feedbackParams = new Map([...difeed.trainableParameters()].filter(([k]) => k.startsWith('feedback.')));
  const headParams = new Map([...difeed.trainableParameters()].filter(([k]) => k.startsWith('head.')));
  const sgd = o.optimizer === 'sgd';
  const fbLr = o.feedbackLr ?? (sgd ? 1e-2 : 1e-3);
  const headLr = o.headLr ?? (sgd ? 1e-2 : 1e-4);
  const group = (params: Map<string, Tensor>, lr: number): Optimizer => (sgd ? new Sgd(e, params, lr) : new Adam(e, params, { lr }));
  // Made inside the try below: a refused hyper-parameter must free the layers too.
  let optimizer: OptimizerGroups | undefined;
  // Everything to save: trainable parameters and BatchNorm running statistics.
  const saved = new Map<string, Tensor>([...difeed.params, ...[...difeed.head.params].map(([k, v]) => [`head.${k}`, v] as [string, Tensor])]);
  // BatchNorm's num_batches_tracked, saved as PyTorch's state_dict holds it.
  const counts = new Map<string, SavedCount>(difeed.batchNorm.map((bn, i) => [`feedback.${i}.1.num_batches_tracked`, { get: () => bn.batches, set: (v) => (bn.batches = v) }]));
  // The U-Net is frozen: gradients flow through it, none into it. One whose weights require
  // gradients (set by its caller, or held by an optimizer still alive) had each step compute and
  // keep its weights' gradients (ADM-256's would be 2.2 GB). Set back as it was however the run ends.
  const unetParams = [...unet.parameters().values()];
  const requiredGrad = unetParams.map((p) => p.requiresGrad);
  for (const p of unetParams) p.requiresGrad = false;
  // The feedback layers, their BatchNorm statistics, the head and both Adams (the U-Net is the
  // caller's), freed however the run ends: a failed fit kept them, and retries piled them up.
  try {
    const [fbOptimizer, headOptimizer] = [group(feedbackParams, fbLr), group(headParams, headLr)];
    optimizer = new OptimizerGroups([fbOptimizer, headOptimizer]);
    const schedules = [new StepLR(fbOptimizer, fbLr, o.stepSize ?? 7, o.gamma ?? 0.1), new StepLR(headOptimizer, headLr, o.stepSize ?? 7, o.gamma ?? 0.1)];
    const settings = {
      head: 'difeed', classes: o.classes, strategy: o.strategy ?? null, feedbackBlocks: o.feedbackBlocks ?? null, multiScaleTarget: o.multiScaleTarget ?? null, t: o.t ?? null, featureBlock: o.featureBlock ?? null, attention: o.head ?? {}, feedbackLr: fbLr, headLr, batchSize,
      stepSize: o.stepSize ?? 7, gamma: o.gamma ?? 0.1, seed, flip: o.flip !== false, trainImages: train.count, dropLast: true,
      unet: { config: unet.plan.flags, weights: o.unetWeights ?? null },
      // Recorded only when given (and the optimizer only when not the default), so states saved before these options resume as they were.
      ...(o.batchNormTrainEpochs === undefined ? {} : { batchNormTrainEpochs: o.batchNormTrainEpochs }),
      ...(sgd ? { optimizer: 'sgd' } : {}),
    };
    const bnTrainEpochs = o.batchNormTrainEpochs ?? epochs;
    const part = partSize(e, difeed, true);
    if (!(Number.isSafeInteger(bnTrainEpochs) && bnTrainEpochs >= 0)) throw new RangeError(`DifFeed: batchNormTrainEpochs ${o.batchNormTrainEpochs} is not a whole number of epochs ≥ 0`);
    const progress = await startOrResume(e, o.checkpoint, !!o.resume, settings, saved, optimizer, o.onResume, counts);
    // A state saved within an epoch records the batches of that epoch it had trained, and their loss sum.
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
      for (const s of schedules) s.setEpoch(epoch);
      const epochIdx = epochBatches(train.count, batchSize, seed * 1000 + epoch, 'DifFeed');
      const batches = epochIdx.length;
      const steps = new StepLosses(e);
      try {
        const resumeAt = partial && epoch === startEpoch ? partial.batch : 0;
        if (resumeAt) steps.weightedSum = partial!.lossSum;
        for (const [b, idx] of epochIdx.entries()) {
          if (b < resumeAt) continue;
          const flips = o.flip === false ? undefined : imageFlips(seed, epoch, idx);
          const xt = await noisyImages(e, difeed, train, idx, trainingNoiseBase(seed, epoch), flips);
          const labels = idx.map((i) => train.labels[i]);
          const training = epoch < bnTrainEpochs;
          let loss: Tensor;
          try {
            loss = batchSize <= part
              ? await trainStepKeepingLoss(e, optimizer, () => crossEntropy(difeed.forward(xt, training), labels))
              : await difeedStepInParts(e, difeed, optimizer, xt, labels, training, part);
          } finally {
            xt.dispose();
          }
          await steps.add(loss, labels, `epoch ${epoch + 1}, batch ${b + 1} (step ${optimizer.steps})`);
          o.onBatch?.(b + 1, batches);
          if (o.checkpoint && b + 1 < batches && performance.now() - lastSave >= saveEvery) {
            await steps.read();
            await saveTrainingState(o.checkpoint, saved, optimizer, { epoch, batch: b + 1, epochLoss: steps.weightedSum, steps: optimizer.steps, losses: JSON.stringify(losses), seconds: seconds() }, settings, counts);
            lastSave = performance.now();
          }
        }
        await steps.read();
      } finally {
        steps.dispose(); // what a failed step left unread
      }
      losses.push(steps.weightedSum / (batches * batchSize));
      if (o.checkpoint) {
        await saveTrainingState(o.checkpoint, saved, optimizer, { epoch, steps: optimizer.steps, losses: JSON.stringify(losses), seconds: seconds() }, settings, counts);
        lastSave = performance.now();
      }
      o.onEpoch?.({ epoch, epochs, loss: losses[losses.length - 1], lr: headOptimizer.lr, seconds: (performance.now() - te) / 1000 });
    }
    const logits = await difeedLogits(e, difeed, test, { seed: o.testNoiseSeed ?? seed, batchSize: o.evalBatchSize ?? batchSize, firstPass: o.testFirstPass });
    const { top1, top5, hits } = countTopK(logits, Array.from({ length: test.count }, (_, i) => test.labels[i]));
    let params = 0;
    for (const p of difeed.trainableParameters().values()) params += p.size;
    return { head: 'difeed', epochs, optimizer: sgd ? 'sgd' : 'adam', lr: headLr, batchSize, params, losses, top1: top1 / test.count, top5: top5 / test.count, testHits: hits, settings, seconds: seconds() };
  } finally {
    for (const t of saved.values()) t.dispose();
    optimizer?.dispose();
    unetParams.forEach((p, i) => (p.requiresGrad = requiredGrad[i]));
  }
}

const SCHEDULE = linearSchedule(1000);

/**
 * The most images one part may hold: a chunk of the U-Net's passes (with or without gradients), and
 * what the bindings of the head and of the feedback layers' largest map (a 1×1 conv into a
 * multi-scale target may be larger than any U-Net tensor) hold.
 */
function partSize(e: Engine, difeed: DifFeed, gradients: boolean): number {
  const chunk = imagesPerChunk(e, difeed.unet.plan, { last: Math.max(difeed.featureBlock, ...difeed.feedbackBlocks), output: false, gradients });
  const blocks = difeed.unet.plan.blocks;
  const feedback = Math.max(...difeed.feedbackBlocks.map((b, i) => {
    const [from, to] = [blocks[b - 1], blocks[difeed.targets[i] - 1]];
    return 4 * Math.max(from.outChannels, to.outChannels) * Math.max(from.size, to.size) ** 2;
  }));
  return Math.min(chunk, e.perBinding(AttentionHead.bytesPerImage(difeed.head.options)), e.perBinding(feedback));
}

/**
 * One training step over a batch larger than a part (partSize: a chunk of the U-Net, or what the
 * head's binding holds), in parts, the engine settling between them: one backward through both
 * passes of every chunk recorded more GPU commands than may wait at once (ADM-256 at 128 MiB
 * bindings runs one image a chunk), and no tensor but x_t holds the whole batch. Each part's feedback
 * layers, pass 2 and head backpropagate on their own, loss weighted nᵢ/n so the parts add up to the
 * batch's mean. BatchNorm in training normalises with the batch's statistics (feedbackStatistics,
 * over every part's pass 1, the running statistics moved once): leaves that collect each part's
 * dL/dmean and dL/dvariance, passed on to the 1×1 convs by statisticsSurrogate, part by part. In
 * evaluation mode BatchNorm is per image. The step of the whole batch; returns the loss, on the GPU.
 */
async function difeedStepInParts(e: Engine, difeed: DifFeed, optimizer: Optimizer, xt: Tensor, labels: number[], training: boolean, part: number): Promise<Tensor> {
  const N = xt.shape[0];
  const ranges = partRanges(N, part);
  const held: Tensor[] = [];
  try {
    // Pass 1 (no gradient), part by part.
    const firsts: Map<number, Tensor>[] = [];
    for (const [s, end] of ranges) {
      firsts.push(e.tidy(() => difeed.firstPass(sliceRows(xt, s, end))));
      held.push(...firsts[firsts.length - 1].values());
      await e.settle();
    }
    const statistics = training ? difeed.feedbackStatistics(firsts) : undefined;
    for (const st of statistics ?? []) {
      held.push(st.mean, st.variance);
      st.mean.requiresGrad = true;
      st.variance.requiresGrad = true;
    }
    const parts = ranges.map(([s, end], p) => () => {
      const feedback = statistics ? difeed.feedbackMapsOfPart(firsts[p], statistics) : difeed.feedbackMaps(firsts[p], false);
      return scale(crossEntropy(difeed.secondPass(sliceRows(xt, s, end), feedback), labels.slice(s, end)), (end - s) / N);
    });
    // The statistics' share, through each part's 1×1 convs.
    const throughStatistics = statistics && (async () => {
      const gradients = statistics.map((st) => ({ mean: st.mean.grad ?? e.keep(e.zeros(st.mean.shape)), variance: st.variance.grad ?? e.keep(e.zeros(st.variance.shape)) }));
      held.push(...gradients.flatMap((g) => [g.mean, g.variance]));
      for (const st of statistics) st.mean.grad = st.variance.grad = null;
      for (const first of firsts) {
        const surrogate = e.tidy(() => difeed.statisticsSurrogate(first, statistics, gradients));
        held.push(surrogate);
        e.tape.backward(surrogate);
        await e.settle();
      }
    });
    return await trainStepKeepingLoss(e, optimizer, parts, throughStatistics);
  } finally {
    for (const t of held) t.dispose();
  }
}

/** Mixed into the training noise's seed: its own stream, apart from any extraction's or test's. */
const TRAINING_NOISE_STREAM = 0x7e4d;

/**
 * The noise base of `epoch`'s training images (per image: noiseSeed(base, image, t)), hashed from
 * the run's seed and the epoch. seed + epoch + 1, as it was, gave seed s's epoch e the noise of
 * seed s + 1's epoch e − 1, image for image, and a test set noised with base s (the default) the
 * noise of seed s − 1's first epoch: runs meant to be independent shared their draws.
 */
export function trainingNoiseBase(seed: number, epoch: number): number {
  return hashSeeds(seed, epoch, TRAINING_NOISE_STREAM);
}

/**
 * Which of images `idx` are mirrored in `epoch`: a fair coin per image and epoch (RandomHorizontalFlip's
 * p = 0.5), seeded by the image, not its place in a batch — half of every batch, as before, flipped
 * the image of a one-image batch every time.
 */
export function imageFlips(seed: number, epoch: number, idx: number[]): boolean[] {
  return coinFlips(seed * 7919 + epoch, idx);
}

/** x_t of images `idx` of `src` (flipped where `flips` says) at DifFeed's t, with per-image noise of `noiseBase`. */
async function noisyImages(e: Engine, difeed: DifFeed, src: ImageSource, idx: number[], noiseBase: number, flips?: boolean[]): Promise<Tensor> {
  const S = difeed.unet.plan.flags.image_size;
  let x = await src.images(idx);
  if (flips) x = mirrorImages(x, idx.length, difeed.unet.plan.flags.in_channels, S, flips);
  const noise = new Float32Array(idx.length * 3 * S * S);
  idx.forEach((img, i) => noise.set(gaussianNoise(3 * S * S, noiseSeed(noiseBase, img, difeed.t)), i * 3 * S * S));
  return e.tidy(() => qSample(e, SCHEDULE, e.tensor(x, [idx.length, 3, S, S]), idx.map(() => difeed.t), e.tensor(noise, [idx.length, 3, S, S])));
}

/**
 * Evaluation-mode logits [count, classes] of every image of `test`, noised with the seed's
 * evaluation noise (the noise of a feature extraction with the same seed), in batches of
 * `batchSize`; pass 1 from `firstPass` when given (see DifFeedFitOptions.testFirstPass).
 */
export async function difeedLogits(e: Engine, difeed: DifFeed, test: ImageSource, o: { seed: number; batchSize: number; firstPass?: FeatureArrays }): Promise<Float32Array> {
  const classes = difeed.options.classes;
  const out = new Float32Array(test.count * classes);
  // In evaluation mode each image's logits are its own: a batch larger than a part runs as batches
  // of a part, so no call records both passes of many chunks at once.
  const batchSize = Math.min(o.batchSize, partSize(e, difeed, false));
  for (let s = 0; s < test.count; s += batchSize) {
    const idx = Array.from({ length: Math.min(batchSize, test.count - s) }, (_, i) => s + i);
    const xt = await noisyImages(e, difeed, test, idx, o.seed, undefined);
    let cached: Map<number, Tensor> | undefined;
    let logits: Float32Array;
    // A refused cache or forward frees the batch's tensors too: a caller that catches and goes on keeps none.
    try {
      const slices = o.firstPass && cachedFirstPass(difeed, o.firstPass, test.count, idx);
      if (slices && s === 0) await checkCachedFirstPass(e, difeed, xt, slices);
      cached = slices ? new Map([...slices].map(([b, v]) => [b, e.tensor(v.data, v.shape)])) : undefined;
      const given = cached;
      logits = await e.noGrad(() => e.tidy(() => (given ? difeed.forwardGivenFirstPass(xt, given, false) : difeed.forward(xt, false)))).readAndDispose();
    } finally {
      cached?.forEach((v) => v.dispose());
      xt.dispose();
    }
    assertFinite(logits, `evaluation: the logits of test images ${s}..${s + idx.length - 1}`);
    out.set(logits, s * classes);
  }
  return out;
}

/** The cached pass-1 features of the consecutive test images `idx`, block → values [n, C, H, W]. */
function cachedFirstPass(difeed: DifFeed, cache: FeatureArrays, count: number, idx: number[]): Map<number, { data: Float32Array; shape: number[] }> {
  if (cache.count !== count) throw new Error(`DifFeed: the cached first pass holds ${cache.count} images, the test set ${count}; extract the same test images`);
  const out = new Map<number, { data: Float32Array; shape: number[] }>();
  for (const b of difeed.feedbackBlocks) {
    const key = featureKey(difeed.t, b);
    const f = cache.features.get(key);
    if (!f) throw new Error(`DifFeed: the cached first pass has no ${key}; extract t=${difeed.t} and the feedback blocks {${difeed.feedbackBlocks}}`);
    const per = f.shape.reduce((p, d) => p * d, 1);
    out.set(b, { data: f.data.subarray(idx[0] * per, (idx[idx.length - 1] + 1) * per), shape: [idx.length, ...f.shape] });
  }
  return out;
}

/**
 * A cached pass 1 stands in for the live one only if it is the same: same images, same noise
 * (the extraction's seed), same weights. Compares one batch and throws when they differ beyond rounding.
 */
async function checkCachedFirstPass(e: Engine, difeed: DifFeed, xt: Tensor, cached: Map<number, { data: Float32Array }>): Promise<void> {
  const live = e.noGrad(() => difeed.firstPass(xt));
  const blocks = difeed.feedbackBlocks;
  const a = await e.readTensors(blocks.map((k) => live.get(k)!));
  const b = blocks.map((k) => cached.get(k)!.data);
  live.forEach((v) => v.dispose());
  blocks.forEach((blk, i) => {
    let scale = 0;
    let diff = 0;
    for (let j = 0; j < a[i].length; j++) {
      scale = Math.max(scale, Math.abs(a[i][j]));
      diff = Math.max(diff, Math.abs(a[i][j] - b[i][j]));
    }
    if (!(diff <= 1e-3 * scale + 1e-5)) {
      throw new Error(`DifFeed: the cached first pass differs from the live one at block ${blk} (max |difference| ${diff.toPrecision(3)}, features up to ${scale.toPrecision(3)}): it was extracted with other noise (seed), images or weights; re-extract or leave it out`);
    }
  });
}
