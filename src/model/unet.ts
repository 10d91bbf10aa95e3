// guided-diffusion's UNetModel on the engine, block by block as in guided_diffusion/unet.py, with
// diffssl's block numbering for the features f(x0, t, b). The forward stops after the last block
// anyone asked for and frees every activation as soon as no later block or tap needs it.
import type { Engine } from '../engine/engine.ts';
import { qkvAttention } from '../engine/ops/attention.ts';
import { conv2d } from '../engine/ops/conv2d.ts';
import { add, silu } from '../engine/ops/elementwise.ts';
import { groupNorm } from '../engine/ops/group-norm.ts';
import { concat, concatRows, reshape, sliceRows } from '../engine/ops/layout.ts';
import { matmul } from '../engine/ops/matmul.ts';
import { dropout } from '../engine/ops/nn.ts';
import { avgPool2, upsample2 } from '../engine/ops/resample.ts';
import { mulberry32 } from '../engine/random.ts';
import { shapeString, type Tensor } from '../engine/tensor.ts';
import { readFinite, type TensorSource } from './checkpoint/tensor-source.ts';
import { CheckpointMismatchError, checkStateDict, TRAINING_STATE_KIND } from './state-dict.ts';
import { checkWholeBatchBinding, imagesPerChunk } from './unet-bindings.ts';

export { CheckpointMismatchError } from './state-dict.ts';
export { BindingLimitError } from './unet-bindings.ts';
import { type Block, type Layer, planUNet, recordedConfigDifference, stateDictShapes, UNetConfigError, type UNetFlags, type UNetPlan } from './unet-config.ts';

export interface ForwardOptions {
  /** Block numbers b (1..N) whose outputs to return. */
  taps?: number[];
  /** Also run the final GN → SiLU → conv and return the model output ε (and variance) prediction. */
  output?: boolean;
  /** Also return the timestep embedding. */
  emb?: boolean;
  /** Added to the output of block b (DifFeed's feedback); same shape as that output. */
  addToBlock?: Map<number, Tensor>;
  /**
   * Training mode: every ResBlock drops out at the config's `dropout` rate (guided-diffusion's
   * nn.Dropout between out_layers' SiLU and conv), each image's mask drawn from this seed, the
   * block's prefix and the image's index in the batch (the same however the batch is chunked).
   * Unset: eval mode, no dropout.
   */
  dropoutSeed?: number;
  /**
   * The index of x's first image in a larger batch run in parts (pretraining's gradient
   * accumulation), so each image draws the dropout mask it would in the whole batch. Default 0.
   */
  firstImage?: number;
}

export interface ForwardResult {
  taps: Map<number, Tensor>;
  output?: Tensor;
  emb?: Tensor;
}

export interface LoadProgress {
  (loaded: number, total: number, key: string): void;
}

export class UNet {
  readonly plan: UNetPlan;

  private constructor(readonly engine: Engine, plan: UNetPlan, private params: Map<string, Tensor>) {
    this.plan = plan;
  }

  /** Number of feature blocks N (37 for the 256×256 model). */
  get numBlocks(): number {
    return this.plan.blocks.length;
  }

  get middleBlock(): number {
    return this.plan.numInputBlocks + 1;
  }

  /** Builds the model from create_model flags and loads every state_dict tensor from `source` (NaN or ±Inf refuse the load). */
  static async load(engine: Engine, flags: UNetFlags, source: TensorSource, onProgress?: LoadProgress): Promise<UNet> {
    const plan = planUNet(flags);
    const expected = stateDictShapes(plan);
    try {
      checkStateDict(expected, source, 'U-Net built from this config (check image_size, num_channels, channel_mult, num_res_blocks, attention_resolutions, learn_sigma and resblock_updown)');
    } catch (err) {
      if (!(err instanceof CheckpointMismatchError)) throw err;
      const hints = [resamplerHint(plan, source), recordHint(plan, source)].filter((h) => h !== undefined);
      throw hints.length ? new CheckpointMismatchError(`${err.message}\n  ${hints.join('\n  ')}`) : err;
    }
    // Shapes fit; flags that change no shape (heads, attention order) are caught by the recorded config.
    let difference: string | undefined;
    try {
      difference = recordedConfigDifference(plan, source.metadata.config);
    } catch (err) {
      if (!(err instanceof UNetConfigError)) throw err;
      throw new CheckpointMismatchError(`${source.name} records the config it was saved with (metadata "config"), and difrep cannot build the U-Net it describes — ${err.message} — so these weights cannot be checked against the model asked for, nor used as that model (recorded: ${source.metadata.config})`);
    }
    if (difference) {
      throw new CheckpointMismatchError(`${source.name} records the config it was saved with (metadata "config"), and it builds another U-Net than the one asked for — ${difference}. Give that config as the model (a JSON file of these flags: ${source.metadata.config})`);
    }
    const params = new Map<string, Tensor>();
    let done = 0;
    try {
      for (const [k, shape] of expected) {
        const data = await readFinite(source, k);
        params.set(k, engine.keep(engine.tensor(data, paramShape(shape), k)));
        onProgress?.(++done, expected.size, k);
      }
    } catch (err) {
      for (const p of params.values()) p.dispose();
      throw err;
    }
    return new UNet(engine, plan, params);
  }

  /** A model with random weights (deterministic in `seed`), for timing and plumbing tests. */
  static random(engine: Engine, flags: UNetFlags, seed = 0): UNet {
    const plan = planUNet(flags);
    const params = new Map<string, Tensor>();
    let s = seed >>> 0;
    const rand = () => {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      return s / 4294967296 - 0.5;
    };
    for (const [k, shape] of stateDictShapes(plan)) {
      const n = shape.reduce((p, d) => p * d, 1);
      const fanIn = shape.length > 1 ? n / shape[0] : 1;
      const scale = shape.length > 1 ? 2 / Math.sqrt(fanIn) : k.endsWith('weight') ? 0 : 0.2;
      const data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = (shape.length === 1 && k.endsWith('weight') ? 1 : 0) + scale * rand();
      params.set(k, engine.keep(engine.tensor(data, paramShape(shape), k)));
    }
    return new UNet(engine, plan, params);
  }

  /**
   * The initialisation guided-diffusion trains from (deterministic in `seed`): PyTorch's default
   * for every conv and linear layer, weight and bias ~ U(−1/√fan_in, 1/√fan_in) (kaiming_uniform_
   * with a = √5), GroupNorm weight 1 and bias 0, and zero_module's zeros (weight and bias) on each
   * ResBlock's last conv (out_layers.3), each attention's proj_out and the output conv out.2
   * (guided_diffusion/unet.py): every ResBlock and attention block starts as the identity and the
   * model predicts ε = 0, so the first loss is E[ε²] = 1.
   */
  static initial(engine: Engine, flags: UNetFlags, seed = 0): UNet {
    const plan = planUNet(flags);
    const shapes = stateDictShapes(plan);
    const rand = mulberry32(seed);
    const zeroModule = /(^|\.)(out_layers\.3|proj_out)\.(weight|bias)$|^out\.2\.(weight|bias)$/;
    const params = new Map<string, Tensor>();
    for (const [k, shape] of shapes) {
      const n = shape.reduce((p, d) => p * d, 1);
      const weightShape = k.endsWith('.bias') ? shapes.get(`${k.slice(0, -'bias'.length)}weight`) : shape;
      const data = new Float32Array(n);
      if (!zeroModule.test(k)) {
        if (weightShape && weightShape.length > 1) {
          const bound = 1 / Math.sqrt(weightShape.slice(1).reduce((p, d) => p * d, 1));
          for (let i = 0; i < n; i++) data[i] = bound * (2 * rand() - 1);
        } else if (k.endsWith('.weight')) {
          data.fill(1); // a GroupNorm's scale
        }
      }
      params.set(k, engine.keep(engine.tensor(data, paramShape(shape), k)));
    }
    return new UNet(engine, plan, params);
  }

  /** The same architecture with other weights of the same keys and shapes (e.g. an EMA copy). */
  withWeights(params: Map<string, Tensor>): UNet {
    for (const [k, p] of this.params) {
      const q = params.get(k);
      if (!q || q.shape.join() !== p.shape.join()) throw new RangeError(`withWeights: ${k} is ${q ? `[${q.shape}]` : 'missing'}, expected [${p.shape}]`);
    }
    return new UNet(this.engine, this.plan, params);
  }

  param(key: string): Tensor {
    const p = this.params.get(key);
    if (!p) throw new Error(`internal: U-Net parameter ${key} not loaded`);
    return p;
  }

  /** Every parameter by state_dict key (conv1d weights are stored as [out, in, 1, 1]). */
  parameters(): Map<string, Tensor> {
    return this.params;
  }

  /**
   * Sinusoidal embedding of t (cos first, then sin; guided_diffusion/nn.py timestep_embedding),
   * evaluated with float32 rounding at each step as PyTorch does, then time_embed's MLP.
   */
  timestepEmbedding(t: readonly number[]): Tensor {
    const e = this.engine;
    const dim = this.plan.modelChannels;
    const half = Math.floor(dim / 2);
    const f = Math.fround;
    const c = f(-Math.log(10000));
    const table = new Float32Array(t.length * dim);
    t.forEach((tv, n) => {
      for (let i = 0; i < half; i++) {
        const freq = f(Math.exp(f(f(c * i) / half)));
        const arg = f(f(tv) * freq);
        table[n * dim + i] = Math.cos(arg);
        table[n * dim + half + i] = Math.sin(arg);
      }
    });
    return e.tidy(() => {
      const sinusoid = e.tensor(table, [t.length, dim], 'timestep_sinusoid');
      const h = silu(matmul(sinusoid, this.param('time_embed.0.weight'), { transB: true, bias: this.param('time_embed.0.bias') }));
      return matmul(h, this.param('time_embed.2.weight'), { transB: true, bias: this.param('time_embed.2.bias') });
    });
  }

  /**
   * Runs x (NCHW, [−1, 1] scale) at timesteps t (one per image) and returns the requested blocks.
   * A batch some op's binding could not hold runs in chunks of images (unet-bindings.ts sizes
   * them from the plan); chunks are cut and joined by buffer copies, or, for tensors that take
   * part in a backward, by slice/concat, which bind the whole batch.
   */
  forward(x: Tensor, t: readonly number[], opts: ForwardOptions = {}): ForwardResult {
    const e = this.engine;
    const N = x.shape[0];
    if (t.length !== N) throw new RangeError(`${t.length} timesteps for a batch of ${N} images`);
    const notFinite = t.findIndex((v) => !Number.isFinite(v));
    if (notFinite >= 0) throw new RangeError(`timestep ${t[notFinite]} of image ${notFinite} is not a finite number (the embedding would be NaN)`);
    const firstImage = opts.firstImage ?? 0;
    if (!Number.isSafeInteger(firstImage) || firstImage < 0) throw new RangeError(`firstImage ${firstImage} is not a whole number ≥ 0 (the index of the first image in its batch)`);
    const feedback = [...(opts.addToBlock?.entries() ?? [])];
    const gradients = e.tape.recording && [x, ...this.params.values(), ...feedback.map(([, v]) => v)].some((v) => v.requiresGrad);
    const last = opts.output ? this.numBlocks : Math.max(0, ...(opts.taps ?? []));
    // Feedback is added to a block's output as it is: broadcast from another shape it would add the
    // same values to every image, and for a block past the last one run it would be ignored.
    for (const [b, v] of feedback) {
      const block = this.plan.blocks[b - 1];
      if (!Number.isInteger(b) || !block) throw new RangeError(`addToBlock: block ${b} does not exist: this U-Net has blocks 1..${this.numBlocks}`);
      if (b > last) throw new RangeError(`addToBlock: block ${b} is past the last block this forward runs (${last}, from its taps and output): its feedback would be ignored`);
      const want = [N, block.outChannels, block.size, block.size];
      if (v.shape.join() !== want.join()) throw new RangeError(`addToBlock: the feedback for block ${b} is ${shapeString(v.shape)}; block ${b}'s output is ${shapeString(want)}`);
    }
    const perChunk = imagesPerChunk(e, this.plan, { last, output: !!opts.output, gradients });
    if (N <= perChunk) return this.forwardBatch(x, t, opts, firstImage);
    // A tensor v of `images` images that takes part in a backward is bound whole, for all N.
    const whole = (what: string, v: Tensor, images = N) => {
      if (e.tape.needsGrad([v])) checkWholeBatchBinding(e, what, (v.byteLength / images) * N, N, perChunk);
    };
    whole(`the input ${x.label}`, x);
    for (const [b, v] of feedback) whole(`the feedback added to block ${b}`, v);
    const parts: ForwardResult[] = [];
    try {
      for (let start = 0; start < N; start += perChunk) {
        const end = Math.min(N, start + perChunk);
        parts.push(e.tidy(() => {
          const fb = opts.addToBlock && new Map(feedback.map(([b, v]) => [b, sliceRows(v, start, end)]));
          const r = this.forwardBatch(sliceRows(x, start, end), t.slice(start, end), { ...opts, addToBlock: fb }, firstImage + start);
          return { taps: r.taps, output: r.output, emb: r.emb };
        }));
        if (start === 0) {
          const first = parts[0];
          for (const [b, v] of first.taps) whole(`block ${b}'s output`, v, end);
          if (first.output) whole('the output', first.output, end);
          if (first.emb) whole('the timestep embedding', first.emb, end);
        }
      }
    } catch (err) {
      for (const p of parts) for (const v of [...p.taps.values(), p.output, p.emb]) v?.dispose();
      throw err;
    }
    const join = (vs: Tensor[]) => {
      const j = concatRows(vs);
      for (const v of vs) v.dispose();
      return j;
    };
    const out: ForwardResult = { taps: new Map() };
    for (const b of parts[0].taps.keys()) out.taps.set(b, join(parts.map((p) => p.taps.get(b)!)));
    if (opts.output) out.output = join(parts.map((p) => p.output!));
    if (opts.emb) out.emb = join(parts.map((p) => p.emb!));
    return out;
  }

  /** `firstImage`: the index of x's first image in the whole batch (dropout masks are per image). */
  private forwardBatch(x: Tensor, t: readonly number[], opts: ForwardOptions, firstImage: number): ForwardResult {
    const e = this.engine;
    const plan = this.plan;
    const N = plan.blocks.length;
    const taps = [...new Set(opts.taps ?? [])];
    for (const b of taps) {
      if (!Number.isInteger(b) || b < 1 || b > N) throw new RangeError(`block ${b} does not exist: this U-Net has blocks 1..${N}`);
    }
    const size = plan.flags.image_size;
    const cin = plan.flags.in_channels;
    if (x.rank !== 4 || x.shape[1] !== cin || x.shape[2] !== size || x.shape[3] !== size) {
      throw new RangeError(`U-Net input ${x.label} is ${shapeString(x.shape)}; this model takes [N, ${cin}, ${size}, ${size}]`);
    }
    if (t.length !== x.shape[0]) throw new RangeError(`${t.length} timesteps for a batch of ${x.shape[0]} images`);
    const last = opts.output ? N : Math.max(0, ...taps);
    if (last === 0 && !opts.emb) throw new RangeError('forward: ask for at least one tap, the output or the embedding');

    const result: ForwardResult = { taps: new Map() };
    e.profileTag('timestep embedding');
    const emb = this.timestepEmbedding(t);
    const embAct = silu(emb); // SiLU of emb_layers, shared by every ResBlock
    const nIn = plan.numInputBlocks;
    const skips = new Map<number, Tensor>();
    const held = (v: Tensor) => v === x || v === emb || [...result.taps.values()].includes(v) || [...skips.values()].includes(v);
    const release = (v: Tensor) => {
      if (!held(v)) v.dispose();
    };

    const rate = plan.flags.dropout ?? 0;
    const seed = opts.dropoutSeed;
    const dropoutSeeds = seed === undefined || rate === 0 ? undefined : (prefix: string) => t.map((_, i) => imageDropoutSeed(seed, prefix, firstImage + i));
    let h = x;
    for (const block of plan.blocks.slice(0, last)) {
      e.profileTag(`block ${block.b}`); // GPU time per block when the engine is profiling
      let input = h;
      if (block.skipFrom !== undefined) {
        const skip = skips.get(block.skipFrom)!;
        input = concat([h, skip], 1);
        skips.delete(block.skipFrom);
        release(skip);
        release(h);
      }
      let out = e.tidy(() => this.runBlock(block, input, embAct, dropoutSeeds));
      const fb = opts.addToBlock?.get(block.b);
      if (fb) {
        const sum = add(out, fb);
        out.dispose();
        out = sum;
      }
      release(input);
      if (h !== input) release(h);
      if (block.b <= nIn && 2 * nIn + 2 - block.b <= last) skips.set(block.b, out);
      if (taps.includes(block.b)) result.taps.set(block.b, out);
      h = out;
    }
    e.profileTag(opts.output ? 'output' : '');
    if (opts.output) {
      result.output = e.tidy(() => {
        const a = groupNorm(h, this.param('out.0.weight'), this.param('out.0.bias'), { silu: true });
        return conv2d(a, this.param('out.2.weight'), { bias: this.param('out.2.bias') });
      });
    }
    release(h);
    for (const s of skips.values()) if (!result.taps.has([...skips.entries()].find(([, v]) => v === s)![0])) s.dispose();
    embAct.dispose();
    if (opts.emb) result.emb = emb;
    else emb.dispose();
    return result;
  }

  private runBlock(block: Block, h: Tensor, embAct: Tensor, dropoutSeeds?: (prefix: string) => number[]): Tensor {
    let out = h;
    for (const layer of block.layers) out = this.runLayer(layer, out, embAct, dropoutSeeds);
    return out;
  }

  private runLayer(l: Layer, x: Tensor, embAct: Tensor, dropoutSeeds?: (prefix: string) => number[]): Tensor {
    const p = (k: string) => this.param(`${l.prefix}.${k}`);
    if (l.kind === 'conv') return conv2d(x, p('weight'), { bias: p('bias') });
    if (l.kind === 'attn') return this.attention(l, x);
    if (l.kind === 'down') return conv2d(x, p('op.weight'), { bias: p('op.bias'), stride: 2 });
    if (l.kind === 'up') return conv2d(upsample2(x), p('conv.weight'), { bias: p('conv.bias') });
    // ResBlock (guided_diffusion/unet.py:236-256): resampling sits between in_layers' SiLU and
    // its conv, and is applied to the raw input on the skip path.
    let a = groupNorm(x, p('in_layers.0.weight'), p('in_layers.0.bias'), { silu: true });
    let skip = x;
    if (l.down) {
      a = avgPool2(a);
      skip = avgPool2(x);
    } else if (l.up) {
      a = upsample2(a);
      skip = upsample2(x);
    }
    const h = conv2d(a, p('in_layers.2.weight'), { bias: p('in_layers.2.bias') });
    const embOut = matmul(embAct, p('emb_layers.1.weight'), { transB: true, bias: p('emb_layers.1.bias') });
    const normed = this.plan.useScaleShiftNorm
      ? groupNorm(h, p('out_layers.0.weight'), p('out_layers.0.bias'), { scaleShift: embOut, silu: true })
      : groupNorm(add(h, reshape(embOut, [h.shape[0], l.cout, 1, 1])), p('out_layers.0.weight'), p('out_layers.0.bias'), { silu: true });
    if (l.cin !== l.cout) skip = conv2d(skip, p('skip_connection.weight'), { bias: p('skip_connection.bias') });
    const dropped = dropoutSeeds ? dropout(normed, this.plan.flags.dropout!, true, dropoutSeeds(l.prefix)) : normed;
    return conv2d(dropped, p('out_layers.3.weight'), { bias: p('out_layers.3.bias'), residual: skip });
  }

  /** AttentionBlock: x + proj_out(attention(qkv(GN(x)))) over the H·W tokens. */
  private attention(l: Extract<Layer, { kind: 'attn' }>, x: Tensor): Tensor {
    const p = (k: string) => this.param(`${l.prefix}.${k}`);
    const [N, C, H, W] = x.shape;
    const xn = groupNorm(x, p('norm.weight'), p('norm.bias'));
    const qkv = conv2d(xn, p('qkv.weight'), { bias: p('qkv.bias') });
    const a = qkvAttention(reshape(qkv, [N, 3 * C, H * W]), l.heads, l.legacy);
    return conv2d(reshape(a, [N, C, H, W]), p('proj_out.weight'), { bias: p('proj_out.bias'), residual: x });
  }
}

/** Names the resblock_updown setting a checkpoint was made with when the config has the other one. */
function resamplerHint(plan: UNetPlan, source: TensorSource): string | undefined {
  const first = plan.blocks.flatMap((b) => b.layers).find((l) => l.kind === 'down' || (l.kind === 'res' && l.down));
  if (!first) return undefined;
  if (first.kind === 'down' && source.info(`${first.prefix}.in_layers.0.weight`)) {
    return `${first.prefix} is a ResBlock in the checkpoint (${first.prefix}.in_layers.*): set resblock_updown true`;
  }
  if (first.kind === 'res' && source.info(`${first.prefix}.op.weight`)) {
    return `${first.prefix} is a conv Downsample in the checkpoint (${first.prefix}.op.weight): set resblock_updown false`;
  }
  return undefined;
}

/**
 * What the source's metadata says about a mismatch: that it is a training state, or the config it
 * was saved with (difrep's ema.safetensors and the reference dumps record one) where that config
 * builds another network than the one asked for (the same network would not explain it).
 */
function recordHint(plan: UNetPlan, source: TensorSource): string | undefined {
  const { config, kind } = source.metadata;
  if (kind === TRAINING_STATE_KIND) {
    return `this is a difrep training state (metadata kind "${kind}": parameters and optimizer moments), not a model's weights: load the run's ema.safetensors (in the same run directory) instead`;
  }
  if (config === undefined) return undefined;
  let sameNetwork = false;
  try {
    sameNetwork = recordedConfigDifference(plan, config) === undefined;
  } catch {
    // A config difrep cannot read or build: still worth showing.
  }
  return sameNetwork ? undefined : `this file records config ${config}: give it as the model (a JSON file of these flags)`;
}

/** conv1d weights [out, in, 1] are kept as conv2d weights [out, in, 1, 1]. */
function paramShape(shape: number[]): number[] {
  return shape.length === 3 ? [...shape, 1] : shape;
}

/** A dropout mask's seed for one image of one ResBlock: FNV-1a of the block's prefix, mixed with the run's seed and the image. */
function imageDropoutSeed(seed: number, prefix: string, image: number): number {
  let h = 0x811c9dc5;
  for (const c of `${prefix}#${image}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193);
  return (Math.imul(h ^ (seed >>> 0), 0x9e3779b1) ^ seed) >>> 0;
}
