// DifFeed (diffssl DiffSSLModelFeedbackFusion): pass 1 (no grad) computes decoder features; each
// selected decoder block b feeds ReLU(BN(conv1x1(f_b))) back, bilinearly resized, into the output
// of encoder block N+1−b (or, for 'multi-scale', one chosen encoder block) in pass 2; pass 2's
// feature block goes to an attention head. The U-Net stays frozen; gradients flow through pass 2
// into the feedback layers.
import type { Engine } from '../../engine/engine.ts';
import { conv2d } from '../../engine/ops/conv2d.ts';
import { add, addScalar, div, mul, relu, scale, sqrt, square, sub } from '../../engine/ops/elementwise.ts';
import { reshape } from '../../engine/ops/layout.ts';
import { sum } from '../../engine/ops/reduce.ts';
import { type BatchNormState, batchNorm2d, resizeBilinear } from '../../engine/ops/nn.ts';
import type { Tensor } from '../../engine/tensor.ts';
import { paperBlocks } from '../block-roles.ts';
import type { TensorSource } from '../checkpoint/tensor-source.ts';
import { withPrefix } from '../checkpoint/tensor-source.ts';
import { fanInBound, initStateDict, loadStateDict, type ParamSpec } from '../state-dict.ts';
import { BindingLimitError, describeBindingLimit } from '../unet-bindings.ts';
import type { UNet } from '../unet.ts';
import { AttentionHead, type AttentionHeadOptions } from './attention-head.ts';

/** One feedback layer's BatchNorm statistics over a batch: per channel, the mean and the biased variance ([C]), over `count` values. */
export interface FeedbackStatistics {
  mean: Tensor;
  variance: Tensor;
  count: number;
}

export interface FeedbackProbe {
  onPreActivation?: (layer: number, preRelu: Tensor) => void;
  offsets?: (Tensor | undefined)[];
  freezeRunningStats?: boolean;
}

export const FEEDBACK_STRATEGIES = ['all', 'bottleneck', 'windowed', 'multi-scale'] as const;
export type FeedbackStrategy = (typeof FEEDBACK_STRATEGIES)[number];

export interface DifFeedOptions {
  strategy?: FeedbackStrategy;
  /** Explicit decoder blocks to feed back (overrides the strategy's list). */
  feedbackBlocks?: number[];
  /** 'multi-scale' only: the encoder block every feedback is added to (default N+1−feature block). */
  multiScaleTarget?: number;
  /** Timestep (paper 150). */
  t?: number;
  /** The pass-2 block given to the head (paper 24, mapped by role). */
  featureBlock?: number;
  classes: number;
  head?: Omit<AttentionHeadOptions, 'blocks' | 'timesteps' | 'classes'>;
}

export class DifFeed {
  readonly feedbackBlocks: number[];
  readonly targets: number[];
  readonly t: number;
  readonly featureBlock: number;
  readonly batchNorm: BatchNormState[];

  private constructor(
    readonly engine: Engine,
    readonly unet: UNet,
    readonly options: DifFeedOptions,
    readonly params: Map<string, Tensor>,
    readonly head: AttentionHead,
  ) {
    const plan = feedbackPlan(unet, options);
    this.feedbackBlocks = plan.feedbackBlocks;
    this.targets = plan.targets;
    this.featureBlock = plan.featureBlock;
    this.t = options.t ?? 150;
    this.batchNorm = this.feedbackBlocks.map((_, i) => ({
      runningMean: params.get(`feedback.${i}.1.running_mean`)!,
      runningVar: params.get(`feedback.${i}.1.running_var`)!,
      batches: 0,
    }));
  }

  static feedbackSpecs(unet: UNet, options: DifFeedOptions): Map<string, ParamSpec> {
    const probe = feedbackPlan(unet, options);
    const plan = unet.plan;
    const m = new Map<string, ParamSpec>();
    probe.feedbackBlocks.forEach((b, i) => {
      const cin = plan.blocks[b - 1].outChannels;
      const cout = plan.blocks[probe.targets[i] - 1].outChannels;
      m.set(`feedback.${i}.0.weight`, { shape: [cout, cin, 1, 1], init: { uniform: fanInBound([cout, cin, 1, 1]) } });
      m.set(`feedback.${i}.1.weight`, { shape: [cout], init: 'ones' });
      m.set(`feedback.${i}.1.bias`, { shape: [cout], init: 'zeros' });
      m.set(`feedback.${i}.1.running_mean`, { shape: [cout], init: 'zeros' });
      m.set(`feedback.${i}.1.running_var`, { shape: [cout], init: 'ones' });
    });
    return m;
  }

  /** The options of DifFeed's attention head on `unet`'s feature block. */
  static headOptions(unet: UNet, options: DifFeedOptions): AttentionHeadOptions {
    const feature = feedbackPlan(unet, options).featureBlock;
    const blk = unet.plan.blocks[feature - 1];
    return { ...options.head, blocks: [{ b: feature, channels: blk.outChannels, size: blk.size }], timesteps: [options.t ?? 150], classes: options.classes };
  }

  static create(e: Engine, unet: UNet, options: DifFeedOptions, seed = 0): DifFeed {
    const params = initStateDict(e, DifFeed.feedbackSpecs(unet, options), seed);
    return new DifFeed(e, unet, options, params, AttentionHead.create(e, DifFeed.headOptions(unet, options), seed + 1));
  }

  /** Loads `feedback.*` (BatchNorm buffers included) and `head.*` from a state dict. */
  static async load(e: Engine, unet: UNet, options: DifFeedOptions, source: TensorSource): Promise<DifFeed> {
    const shapes = new Map([...DifFeed.feedbackSpecs(unet, options)].map(([k, s]) => [k, s.shape]));
    const fbKeys = source.keys().filter((k) => k.startsWith('feedback.') && !k.endsWith('num_batches_tracked'));
    const fbSource: TensorSource = { ...source, keys: () => fbKeys, info: source.info, read: source.read, close: source.close, name: source.name, metadata: source.metadata };
    // A negative running variance makes eval-mode BatchNorm's sqrt(var + eps) NaN, which the ReLU
    // after it would turn into 0 unseen (max(NaN, 0)): refused, as PyTorch's NaN logits would be.
    for (const key of fbKeys.filter((k) => k.endsWith('.running_var'))) {
      const at = (await source.read(key)).findIndex((v) => v < 0);
      if (at >= 0) throw new RangeError(`${source.name}: DifFeed's ${key}[${at}] is negative; a BatchNorm running variance is at least 0 (this state was edited or corrupted: train again or restore it)`);
    }
    const params = await loadStateDict(e, shapes, fbSource, 'DifFeed feedback layers');
    const head = await AttentionHead.load(e, DifFeed.headOptions(unet, options), withPrefix(source, 'head.'));
    const fb = new DifFeed(e, unet, options, params, head);
    for (const [i, bn] of fb.batchNorm.entries()) {
      const key = `feedback.${i}.1.num_batches_tracked`;
      if (source.info(key)) bn.batches = (await source.read(key))[0];
    }
    return fb;
  }

  /** Parameters the optimizer trains: the feedback layers' conv and BN affine, and the head. */
  trainableParameters(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [k, v] of this.params) if (!k.includes('running_')) out.set(k, v);
    for (const [k, v] of this.head.params) out.set(`head.${k}`, v);
    return out;
  }

  /**
   * x_t [N, C, H, W] (already noised at this.t) → logits. `training` selects BatchNorm's mode.
   * `probe` is for parity checks: it receives each feedback layer's pre-ReLU activation, may add a
   * constant offset to it (to settle a ReLU input that rounding puts on the other side of 0), and
   * can keep the running statistics from moving.
   */
  forward(xt: Tensor, training: boolean, probe?: FeedbackProbe): Tensor {
    return this.engine.tidy(() => this.forwardGivenFirstPass(xt, this.firstPass(xt), training, probe));
  }

  /** Pass 1 alone (no grad): the feedback blocks' features of x_t, block → [N, C, H, W]. */
  firstPass(xt: Tensor): Map<number, Tensor> {
    const ts = new Array<number>(xt.shape[0]).fill(this.t);
    return this.engine.tidy(() => this.engine.noGrad(() => this.unet.forward(xt, ts, { taps: this.feedbackBlocks })).taps);
  }

  /**
   * forward with pass 1 given (`first`: the feedback blocks' features of this same x_t, e.g.
   * cached by a feature extraction with the same noise), so only pass 2 runs.
   */
  forwardGivenFirstPass(xt: Tensor, first: Map<number, Tensor>, training: boolean, probe?: FeedbackProbe): Tensor {
    const e = this.engine;
    this.checkFirstPass(first, xt.shape[0]);
    this.checkWholeBatchBindings(xt.shape[0], true);
    return e.tidy(() => this.secondPass(xt, this.feedbackMaps(first, training, probe)));
  }

  /**
   * The feedback of pass 1's features `first` (block → [N, C, H, W]): encoder block → the sum of
   * ReLU(BN(conv1x1(f_b))) resized to its size, for the whole batch (BatchNorm's statistics, in
   * training, are the batch's; its running statistics move once per call).
   */
  feedbackMaps(first: Map<number, Tensor>, training: boolean, probe?: FeedbackProbe): Map<number, Tensor> {
    const e = this.engine;
    const N = first.values().next().value?.shape[0] ?? 0;
    this.checkFirstPass(first, N);
    this.checkWholeBatchBindings(N, false);
    return this.feedbackFrom(first, (i, conv) => {
      const bnState = probe?.freezeRunningStats ? { ...this.batchNorm[i], runningMean: e.zeros([conv.shape[1]]), runningVar: e.zeros([conv.shape[1]]) } : this.batchNorm[i];
      const pre = batchNorm2d(conv, this.params.get(`feedback.${i}.1.weight`)!, this.params.get(`feedback.${i}.1.bias`)!, bnState, { training });
      probe?.onPreActivation?.(i, pre);
      const offset = probe?.offsets?.[i];
      return offset ? add(pre, offset) : pre;
    });
  }

  /**
   * encoder block → the sum of its feedbacks resize(ReLU(normalise(i, conv1x1_i(f_b)))), where
   * `normalise` is layer i's BatchNorm (and affine map).
   */
  private feedbackFrom(first: Map<number, Tensor>, normalise: (layer: number, conv: Tensor) => Tensor): Map<number, Tensor> {
    return this.engine.tidy(() => {
      const feedback = new Map<number, Tensor>();
      this.feedbackBlocks.forEach((_, i) => {
        const target = this.unet.plan.blocks[this.targets[i] - 1];
        const fb = resizeBilinear(relu(normalise(i, this.feedbackConv(first, i))), target.size, target.size);
        const prev = feedback.get(target.b);
        feedback.set(target.b, prev ? add(prev, fb) : fb);
      });
      return feedback;
    });
  }

  /** Feedback layer i's 1×1 conv of its decoder block's pass-1 feature. */
  private feedbackConv(first: Map<number, Tensor>, layer: number): Tensor {
    return conv2d(first.get(this.feedbackBlocks[layer])!, this.params.get(`feedback.${layer}.0.weight`)!);
  }

  /**
   * BatchNorm's batch statistics of every feedback layer over a batch given in parts (`firsts`:
   * each part's pass-1 features), without holding the batch whole: per channel the mean of the
   * 1×1 conv's output and its biased variance, then the running statistics moved once, as
   * batchNorm2d moves them (momentum 0.1, the variance unbiased by M/(M − 1), M = N·H·W).
   */
  feedbackStatistics(firsts: readonly Map<number, Tensor>[]): FeedbackStatistics[] {
    const e = this.engine;
    // One scope for all layers: a later layer that throws leaves no earlier layer's statistics alive.
    return e.tidy(() => e.noGrad(() => this.feedbackBlocks.map((b, i) => {
      const C = this.params.get(`feedback.${i}.0.weight`)!.shape[0];
      const convs = (f: (c: Tensor) => Tensor) => firsts.map((first) => e.tidy(() => f(this.feedbackConv(first, i))));
      const [, , H, W] = firsts[0].get(b)!.shape;
      const M = firsts.reduce((n, first) => n + first.get(b)!.shape[0], 0) * H * W;
      if (M < 2) throw new RangeError(`DifFeed: BatchNorm needs more than one value per channel, got ${M}`);
      const total = (parts: Tensor[]) => parts.reduce((a, p) => add(a, p));
      const mean = scale(total(convs((c) => sum(c, [0, 2, 3]))), 1 / M);
      const variance = scale(total(convs((c) => sum(square(sub(c, reshape(mean, [C, 1, 1]))), [0, 2, 3]))), 1 / M);
      const bn = this.batchNorm[i];
      const [rm, rv] = [add(scale(bn.runningMean, 0.9), scale(mean, 0.1)), add(scale(bn.runningVar, 0.9), scale(variance, 0.1 * M / (M - 1)))];
      e.copyBuffer(rm.buffer, 0, bn.runningMean.buffer, 0, rm.byteLength);
      e.copyBuffer(rv.buffer, 0, bn.runningVar.buffer, 0, rv.byteLength);
      bn.runningMean.markWritten();
      bn.runningVar.markWritten();
      bn.batches++;
      return { mean, variance, count: M };
    })));
  }

  /**
   * The feedback of one part's pass-1 features `first`, BatchNorm normalising with the batch's
   * `statistics` (feedbackStatistics; leaves that want a gradient collect this part's share of
   * dL/dmean and dL/dvariance), recorded for the backward.
   */
  feedbackMapsOfPart(first: Map<number, Tensor>, statistics: readonly FeedbackStatistics[]): Map<number, Tensor> {
    return this.feedbackFrom(first, (i, conv) => {
      const perChannel = (t: Tensor) => reshape(t, [conv.shape[1], 1, 1]);
      const { mean, variance } = statistics[i];
      const xn = div(sub(conv, perChannel(mean)), perChannel(sqrt(addScalar(variance, 1e-5))));
      return add(mul(xn, perChannel(this.params.get(`feedback.${i}.1.weight`)!)), perChannel(this.params.get(`feedback.${i}.1.bias`)!));
    });
  }

  /**
   * The statistics' share of the feedback layers' gradient for one part: a scalar whose gradient
   * at each conv output c is dmean/M + dvariance·2(c − mean)/M (the batch's M values; the centred
   * sum Σ(c − mean) is 0, so the mean inside the variance adds nothing), given dmean and dvariance
   * summed over every part.
   */
  statisticsSurrogate(first: Map<number, Tensor>, statistics: readonly FeedbackStatistics[], gradients: readonly { mean: Tensor; variance: Tensor }[]): Tensor {
    const e = this.engine;
    return e.tidy(() => this.feedbackBlocks.map((_, i) => {
      const conv = this.feedbackConv(first, i);
      const perChannel = (t: Tensor) => reshape(t, [conv.shape[1], 1, 1]);
      const { mean, count } = statistics[i];
      const dMean = e.noGrad(() => perChannel(scale(gradients[i].mean, 1 / count)));
      const dVariance = e.noGrad(() => perChannel(scale(gradients[i].variance, 1 / count)));
      const centred = sub(conv, e.noGrad(() => perChannel(mean)));
      return add(sum(mul(conv, dMean)), sum(mul(square(centred), dVariance)));
    }).reduce((a, s) => add(a, s)));
  }

  /** Pass 2 of x_t [n, C, H, W] with `feedback` (encoder block → [n, …], as feedbackMaps gives) added, and the head: logits [n, classes]. */
  secondPass(xt: Tensor, feedback: Map<number, Tensor>): Tensor {
    const ts = new Array<number>(xt.shape[0]).fill(this.t);
    return this.engine.tidy(() => {
      const second = this.unet.forward(xt, ts, { taps: [this.featureBlock], addToBlock: feedback });
      return this.head.forward(new Map([[this.t, new Map([[this.featureBlock, second.taps.get(this.featureBlock)!]])]]));
    });
  }

  /** Pass 1's features hold every feedback block's output for N images. */
  private checkFirstPass(first: Map<number, Tensor>, N: number): void {
    for (const b of this.feedbackBlocks) {
      const blk = this.unet.plan.blocks[b - 1];
      const want = [N, blk.outChannels, blk.size, blk.size];
      const got = first.get(b)?.shape;
      if (!got || got.join() !== want.join()) throw new RangeError(`DifFeed: the first pass's feature of block ${b} is ${got ? `[${got}]` : 'missing'}, expected [${want}]`);
    }
  }

  /**
   * The U-Net passes run a big batch in chunks, but the feedback layers run on the whole batch, and
   * the feedback (which takes part in the backward) is sliced whole: each of these tensors must fit
   * one storage binding. The largest are the feedback maps (conv, BN, ReLU and the bilinear resize
   * between the two resolutions), and with `head` (one pass over the batch: forward) the feature
   * the head reads. Training in parts (fit-difeed.ts) gives the feedback layers and the head a part
   * at a time.
   */
  private checkWholeBatchBindings(N: number, head: boolean): void {
    const blocks = this.unet.plan.blocks;
    let most = { bytes: 0, what: '' };
    const need = (what: string, channels: number, size: number) => {
      const bytes = 4 * N * channels * size * size;
      if (bytes > most.bytes) most = { bytes, what: `${what} [${N}, ${channels}, ${size}, ${size}]` };
    };
    this.feedbackBlocks.forEach((b, i) => {
      const from = blocks[b - 1];
      const to = blocks[this.targets[i] - 1];
      need(`the feedback from block ${b} into block ${to.b}`, Math.max(from.outChannels, to.outChannels), Math.max(from.size, to.size));
    });
    const f = blocks[this.featureBlock - 1];
    if (head) need(`block ${f.b}'s feature for the head`, f.outChannels, f.size);
    const max = this.engine.maxBindingBytes;
    if (most.bytes <= max) return;
    const fit = Math.floor(max / (most.bytes / N));
    throw new BindingLimitError(
      `DifFeed: ${most.what} is ${most.bytes} bytes, over the largest storage binding, ${describeBindingLimit(this.engine)}. ` +
        `Only the U-Net passes split a batch; the feedback layers${head ? ' and the head' : ''} take it whole` +
        (fit > 0 ? `: use batches of at most ${fit} images` : ', and not even one image fits: feed back from lower-resolution blocks'),
    );
  }
}

/** Which decoder blocks feed back into which encoder blocks, and which block the head reads. */
export function feedbackPlan(unet: UNet, options: DifFeedOptions): { feedbackBlocks: number[]; targets: number[]; featureBlock: number } {
  const plan = unet.plan;
  const roles = paperBlocks(plan);
  const N = plan.blocks.length;
  const strategy = options.strategy ?? 'bottleneck';
  if (!FEEDBACK_STRATEGIES.includes(strategy)) throw new RangeError(`DifFeed: strategy ${JSON.stringify(strategy)} is none of ${FEEDBACK_STRATEGIES.join(', ')}`);
  const feedbackBlocks = options.feedbackBlocks ?? (strategy === 'multi-scale' ? roles.windowed : roles[strategy]);
  // No feedback is no DifFeed: its first forward asked the U-Net for no tap.
  if (!feedbackBlocks.length) throw new RangeError('DifFeed: feedbackBlocks is empty; give at least one decoder block to feed back (or a strategy)');
  const featureBlock = options.featureBlock ?? roles.feature;
  if (!Number.isInteger(featureBlock) || featureBlock < 1 || featureBlock > N) throw new RangeError(`DifFeed: feature block ${featureBlock} is not a block of this U-Net (1..${N})`);
  for (const b of feedbackBlocks) {
    if (!Number.isInteger(b) || b <= plan.numInputBlocks + 1 || b > N) throw new RangeError(`DifFeed: block ${b} is not a decoder block (decoder blocks are ${plan.numInputBlocks + 2}..${N})`);
  }
  const repeated = feedbackBlocks.find((b, i) => feedbackBlocks.indexOf(b) !== i);
  if (repeated !== undefined) throw new RangeError(`DifFeed: feedback block ${repeated} is listed twice (${feedbackBlocks.join(', ')}); list each once`);
  if (options.multiScaleTarget !== undefined && strategy !== 'multi-scale') throw new RangeError(`DifFeed: multiScaleTarget is for the multi-scale strategy, not ${strategy} (whose feedback goes to each block's mirror)`);
  const multiTarget = options.multiScaleTarget ?? N + 1 - featureBlock;
  if (!Number.isInteger(multiTarget)) throw new RangeError(`DifFeed: multiScaleTarget ${multiTarget} is not a block number (encoder blocks are 1..${plan.numInputBlocks})`);
  const targets = feedbackBlocks.map((b) => (strategy === 'multi-scale' ? multiTarget : N + 1 - b));
  // Pass 2 stops at the feature block: feedback into a later block would change nothing the head
  // sees (its layers would train on zero gradients while their BatchNorm statistics moved).
  const late = targets.map((target, i) => [feedbackBlocks[i], target]).filter(([, target]) => target < 1 || target > Math.min(featureBlock, plan.numInputBlocks));
  if (late.length) {
    throw new RangeError(`DifFeed: feedback ${late.map(([b, target]) => `${b} → ${target}`).join(', ')} lands outside the encoder blocks that pass 2 runs before the feature block ${featureBlock} (1..${Math.min(featureBlock, plan.numInputBlocks)}): choose a later feature block or other feedback blocks`);
  }
  return { feedbackBlocks, targets, featureBlock };
}
