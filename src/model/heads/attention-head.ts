// The paper's Attention head and DifFormer: diffssl's AttentionFusion (attention_fusion.py,
// attention_head.py). Per block b a tokenizer (adaptive pool to s = min(size, prePool), LayerNorm
// over [C, s, s], 1×1 conv C → d); per timestep the tokens of all blocks are concatenated after a
// CLS token and run through one shared pre-norm Transformer; the CLS outputs of every timestep are
// concatenated and classified by one Linear. State-dict names follow the PyTorch module.
import type { Engine } from '../../engine/engine.ts';
import { adaptiveAvgPool2d } from '../../engine/ops/adaptive-pool.ts';
import { conv2d } from '../../engine/ops/conv2d.ts';
import { add, gelu } from '../../engine/ops/elementwise.ts';
import { concat, expand, permute, reshape, slice } from '../../engine/ops/layout.ts';
import { matmul } from '../../engine/ops/matmul.ts';
import { linear } from '../../engine/ops/nn.ts';
import { layerNorm } from '../../engine/ops/normalize.ts';
import { softmax } from '../../engine/ops/softmax.ts';
import { shapeString, type Tensor } from '../../engine/tensor.ts';
import type { TensorSource } from '../checkpoint/tensor-source.ts';
import { fanInBound, initStateDict, loadStateDict, type ParamSpec } from '../state-dict.ts';

export interface FeatureBlock {
  /** Block number b. */
  b: number;
  channels: number;
  /** Spatial size of the feature map (square). */
  size: number;
}

export interface AttentionHeadOptions {
  blocks: FeatureBlock[];
  /** Timesteps whose CLS tokens are concatenated (one for the Attention head). */
  timesteps: number[];
  classes: number;
  /** Token width d (paper 1024). */
  dim?: number;
  heads?: number;
  mlpRatio?: number;
  layers?: number;
  /** Tokenizer pools feature maps larger than this to this size (paper 16). */
  prePoolSize?: number;
}

export const ATTENTION_HEAD_DEFAULTS = { dim: 1024, heads: 8, mlpRatio: 4, layers: 2, prePoolSize: 16 };

/** The MLP's hidden units: int(dim · mlp_ratio), as timm's Block (diffssl attention_head.py) sizes it. */
const mlpHidden = (mlpRatio: number, dim: number) => Math.trunc(mlpRatio * dim);

/** Features for one forward: timestep → block → [N, C, H, W]. */
export type FeatureSet = Map<number, Map<number, Tensor>>;

const T = 'intra_inter_block_attention';

export class AttentionHead {
  readonly dim: number;
  readonly heads: number;
  readonly mlpRatio: number;
  readonly layers: number;
  readonly prePoolSize: number;

  protected constructor(readonly engine: Engine, readonly options: AttentionHeadOptions, readonly params: Map<string, Tensor>) {
    const o = { ...ATTENTION_HEAD_DEFAULTS, ...options };
    this.dim = o.dim;
    this.heads = o.heads;
    this.mlpRatio = o.mlpRatio;
    this.layers = o.layers;
    this.prePoolSize = o.prePoolSize;
  }

  static specs(options: AttentionHeadOptions): Map<string, ParamSpec> {
    const o = { ...ATTENTION_HEAD_DEFAULTS, ...options };
    const d = o.dim;
    // timm's Attention asserts it too: each head attends over d / heads channels.
    if (!Number.isInteger(d / o.heads)) throw new RangeError(`attention head: dim ${d} does not split into ${o.heads} heads; give a dim that is a multiple of the heads`);
    // An empty list built a head whose first forward failed inside concat; 1.5 layers built one.
    const whole = (v: number, least: number) => Number.isInteger(v) && v >= least;
    for (const [what, v, least] of [['layers', o.layers, 0], ['classes', o.classes, 1], ['blocks', o.blocks.length, 1], ['timesteps', o.timesteps.length, 1]] as const) {
      if (!whole(v, least)) throw new RangeError(`attention head: ${what} ${v} must be a whole number ≥ ${least}`);
    }
    const bad = o.blocks.find((blk) => !whole(blk.channels, 1) || !whole(blk.size, 1));
    if (bad) throw new RangeError(`attention head: block ${bad.b} of ${bad.channels} channels at ${bad.size}×${bad.size} has no features; channels and size are whole numbers ≥ 1`);
    const hidden = mlpHidden(o.mlpRatio, d);
    if (!whole(hidden, 1)) throw new RangeError(`attention head: mlpRatio ${o.mlpRatio} gives an MLP of ${hidden} units at dim ${d}; give a ratio of at least 1 / dim`);
    // A repeat would share one block's tokenizer weights but tokenize its feature twice, or feed one
    // timestep's CLS to the classifier twice (diffssl asks for lists without repeats).
    for (const [what, list] of [['block', o.blocks.map((blk) => blk.b)], ['timestep', o.timesteps]] as const) {
      const repeated = list.find((v, i) => list.indexOf(v) !== i);
      if (repeated !== undefined) throw new RangeError(`attention head: ${what} ${repeated} is listed twice (${what}s ${list.join(', ')}); list each once`);
    }
    const m = new Map<string, ParamSpec>();
    const lin = (name: string, out: number, inF: number, bias = true) => {
      m.set(`${name}.weight`, { shape: [out, inF], init: { uniform: fanInBound([out, inF]) } });
      if (bias) m.set(`${name}.bias`, { shape: [out], init: { uniform: fanInBound([out, inF]) } });
    };
    for (const blk of o.blocks) {
      const s = Math.min(blk.size, o.prePoolSize);
      m.set(`pre_layer.${blk.b}.1.weight`, { shape: [blk.channels, s, s], init: 'ones' });
      m.set(`pre_layer.${blk.b}.1.bias`, { shape: [blk.channels, s, s], init: 'zeros' });
      m.set(`pre_layer.${blk.b}.2.weight`, { shape: [d, blk.channels, 1, 1], init: { uniform: fanInBound([d, blk.channels, 1, 1]) } });
      m.set(`pre_layer.${blk.b}.2.bias`, { shape: [d], init: { uniform: fanInBound([d, blk.channels, 1, 1]) } });
    }
    m.set(`${T}.cls_token`, { shape: [1, 1, d], init: 'zeros' });
    for (let i = 1; i <= o.layers; i++) {
      const p = `${T}.layers.${i}`;
      m.set(`${p}.norm1.weight`, { shape: [d], init: 'ones' });
      m.set(`${p}.norm1.bias`, { shape: [d], init: 'zeros' });
      lin(`${p}.attn.qkv`, 3 * d, d, false);
      lin(`${p}.attn.proj`, d, d);
      m.set(`${p}.norm2.weight`, { shape: [d], init: 'ones' });
      m.set(`${p}.norm2.bias`, { shape: [d], init: 'zeros' });
      lin(`${p}.mlp.fc1`, hidden, d);
      lin(`${p}.mlp.fc2`, d, hidden);
    }
    lin('head', o.classes, d * o.timesteps.length);
    return m;
  }

  /**
   * Bytes per image of the largest tensor a forward or backward binds whole: the attention weights
   * (heads × L × L), the MLP's hidden layer (L × mlpRatio·d), the qkv (L × 3d), with L the tokens
   * of one timestep and the CLS token, or a block's pooled input to the tokenizer's LayerNorm
   * (C × s²). A batch times this must fit a storage binding.
   */
  static bytesPerImage(options: AttentionHeadOptions): number {
    const o = { ...ATTENTION_HEAD_DEFAULTS, ...options };
    const L = 1 + o.blocks.reduce((n, b) => n + Math.min(b.size, o.prePoolSize) ** 2, 0);
    const input = Math.max(...o.blocks.map((b) => b.channels * Math.min(b.size, o.prePoolSize) ** 2));
    return 4 * Math.max(L * o.heads * L, L * mlpHidden(o.mlpRatio, o.dim), L * 3 * o.dim, input);
  }

  /**
   * Refuses, before anything is allocated, a head over MAX_PARAMETERS or with a weight larger than
   * one storage binding (a matmul binds it whole): --dim 16384 --layers 64 grew to 24 GB unannounced
   * until the system's out-of-memory killer ended it.
   */
  static checkSize(e: Engine, options: AttentionHeadOptions): void {
    let parameters = 0;
    let largest = { name: '', shape: [] as readonly number[], values: 0 };
    for (const [name, { shape }] of AttentionHead.specs(options)) {
      const values = shape.reduce((a, b) => a * b, 1);
      parameters += values;
      if (values > largest.values) largest = { name, shape, values };
    }
    if (parameters > AttentionHead.MAX_PARAMETERS) {
      throw new RangeError(`attention head: ${parameters.toLocaleString('en')} parameters (${((16 * parameters) / 1e9).toFixed(1)} GB to train: weights, gradients and Adam's two moments), over the ${AttentionHead.MAX_PARAMETERS.toLocaleString('en')} allowed: give a smaller --dim or fewer --layers (the paper's head: --dim 1024, 2 layers, 25 million)`);
    }
    if (4 * largest.values > e.maxBindingBytes) {
      throw new RangeError(`attention head: its weight ${largest.name} [${largest.shape.join(', ')}] takes ${4 * largest.values} bytes, over this device's largest storage binding (${e.maxBindingBytes}): give a smaller --dim`);
    }
  }

  /** The most parameters a head may have: 5·10⁸ train in 8 GB. */
  static readonly MAX_PARAMETERS = 5e8;

  static create(e: Engine, options: AttentionHeadOptions, seed = 0): AttentionHead {
    return new AttentionHead(e, options, initStateDict(e, AttentionHead.specs(options), seed));
  }

  static async load(e: Engine, options: AttentionHeadOptions, source: TensorSource): Promise<AttentionHead> {
    const shapes = new Map([...AttentionHead.specs(options)].map(([k, s]) => [k, s.shape]));
    return new AttentionHead(e, options, await loadStateDict(e, shapes, source, 'attention head'));
  }

  protected p(key: string): Tensor {
    const t = this.params.get(key);
    if (!t) throw new Error(`internal: head parameter ${key} missing`);
    return t;
  }

  /** features[t][b] for every configured t and b → logits [N, classes]. */
  forward(features: FeatureSet): Tensor {
    const e = this.engine;
    return e.tidy(() => {
      const cls = this.options.timesteps.map((t) => {
        const perBlock = features.get(t);
        const tokens = this.options.blocks.map((blk) => {
          const f = perBlock?.get(blk.b);
          if (!f) throw new RangeError(`attention head: no feature for t=${t}, b=${blk.b}`);
          return this.tokenize(blk, f);
        });
        return this.transformer(concat(tokens, 1));
      });
      return linear(cls.length === 1 ? cls[0] : concat(cls, 1), this.p('head.weight'), this.p('head.bias'));
    });
  }

  /** [N, C, H, W] → [N, s², d]: pool if larger than prePoolSize, LayerNorm over [C, s, s], 1×1 conv. */
  private tokenize(blk: FeatureBlock, f: Tensor): Tensor {
    if (f.rank !== 4 || f.shape[1] !== blk.channels || f.shape[2] !== blk.size || f.shape[3] !== blk.size) {
      throw new RangeError(`attention head: feature of block ${blk.b} is ${shapeString(f.shape)}, expected [N, ${blk.channels}, ${blk.size}, ${blk.size}]`);
    }
    const s = Math.min(blk.size, this.prePoolSize);
    const pooled = s < blk.size ? adaptiveAvgPool2d(f, s) : f;
    const normed = layerNorm(pooled, this.p(`pre_layer.${blk.b}.1.weight`), this.p(`pre_layer.${blk.b}.1.bias`));
    const conv = conv2d(normed, this.p(`pre_layer.${blk.b}.2.weight`), { bias: this.p(`pre_layer.${blk.b}.2.bias`) });
    return permute(reshape(conv, [f.shape[0], this.dim, s * s]), [0, 2, 1]);
  }

  /** [N, L, d] tokens → CLS output [N, d] after CLS insertion and the pre-norm blocks. */
  private transformer(tokens: Tensor): Tensor {
    const N = tokens.shape[0];
    let x = concat([expand(this.p(`${T}.cls_token`), [N, 1, this.dim]), tokens], 1);
    for (let i = 1; i <= this.layers; i++) {
      const p = `${T}.layers.${i}`;
      x = add(x, this.selfAttention(p, layerNorm(x, this.p(`${p}.norm1.weight`), this.p(`${p}.norm1.bias`))));
      const h = gelu(linear(layerNorm(x, this.p(`${p}.norm2.weight`), this.p(`${p}.norm2.bias`)), this.p(`${p}.mlp.fc1.weight`), this.p(`${p}.mlp.fc1.bias`)));
      x = add(x, linear(h, this.p(`${p}.mlp.fc2.weight`), this.p(`${p}.mlp.fc2.bias`)));
    }
    return reshape(slice(x, [0, 0], [N, 1]), [N, this.dim]);
  }

  /** timm Attention: qkv (no bias) viewed as (3, heads, d/heads); softmax(q·kᵀ/√hd)·v; proj. */
  private selfAttention(p: string, x: Tensor): Tensor {
    const [N, L] = x.shape;
    const H = this.heads;
    const hd = this.dim / H;
    const qkv = permute(reshape(linear(x, this.p(`${p}.attn.qkv.weight`)), [N, L, 3, H, hd]), [2, 0, 3, 1, 4]); // [3, N, H, L, hd]
    const flat = reshape(qkv, [3, N * H, L, hd]);
    const part = (i: number) => reshape(slice(flat, [i], [i + 1]), [N * H, L, hd]);
    const weights = softmax(matmul(part(0), part(1), { transB: true }), { scale: 1 / Math.sqrt(hd) });
    const out = reshape(permute(reshape(matmul(weights, part(2)), [N, H, L, hd]), [0, 2, 1, 3]), [N, L, this.dim]);
    return linear(out, this.p(`${p}.attn.proj.weight`), this.p(`${p}.attn.proj.bias`));
  }
}

/**
 * DifFormer: the attention head over several blocks × several timesteps (paper defaults
 * B = {19, 24, 30}, T = {90, 150, 300}); one tokenizer per block and one Transformer shared by all
 * timesteps. Same module as AttentionHead, so the same state-dict names.
 */
export const DIFFORMER_DEFAULTS = { blocks: [19, 24, 30], timesteps: [90, 150, 300] };
