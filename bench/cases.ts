// What `npm run bench` times: every kernel family on shapes of the real 256×256 ADM model (and the
// 64×64 reference config's whole U-Net). Each case says how much work it is (FLOPs or bytes), how
// to run it on difrep, and what the peer engine should run for the same shape.
import type { Engine } from '../src/engine/engine.ts';
import * as ops from '../src/engine/ops/index.ts';
import type { Tensor } from '../src/engine/tensor.ts';
import { UNet } from '../src/model/unet.ts';
import { ADM_256_UNCOND, type UNetFlags } from '../src/model/unet-config.ts';
import { Adam } from '../src/train/optimizer.ts';
import { gaussianNoise, linearSchedule, qSample } from '../src/model/diffusion.ts';

/**
 * Work the peer runs for the same case (bench/peer-tfjs.ts: the kernel ops; bench/peer-torch.py:
 * all). The whole-model ops name create_model flags: the forward of `batch` images stopping after
 * block `block`, and one pretraining step as trainingCase's.
 */
export type PeerOp =
  | { op: 'matmul'; m: number; k: number; n: number }
  | { op: 'conv2d'; n: number; h: number; w: number; cin: number; cout: number; k: number }
  | { op: 'softmax'; rows: number; cols: number }
  | { op: 'add'; size: number }
  | { op: 'unet-forward'; flags: UNetFlags; batch: number; block: number }
  | { op: 'unet-train'; flags: UNetFlags; batch: number };

export interface BenchCase {
  family: string;
  name: string;
  /** Compute-bound cases report GFLOP/s against the FMA peak, memory-bound ones GB/s against the copy peak. */
  flops?: number;
  bytes?: number;
  /** Target fraction of the measured peak: issue 13 (speed) for matmul, convs, GroupNorm+SiLU, softmax and Adam; the first bench issue for the rest. */
  target?: number;
  /** Whole-model cases: images per call, so the throughput reads in images/s. */
  images?: number;
  /** Quick mode runs only cases marked quick. */
  quick?: boolean;
  /** Only under --full; 'cpu': only under --full on CPU adapters (lavapipe, SwiftShader), always elsewhere. */
  full?: boolean | 'cpu';
  peer?: PeerOp;
  /**
   * Allocates inputs and returns the call to time plus a cleanup, and, for a case whose algorithm
   * does other work than `flops` counts (a Winograd conv), that algorithm's name and the FLOPs it
   * performs: `flops` then gives the effective throughput, `executedFlops` the % of peak.
   */
  setup(e: Engine): Promise<CaseRun> | CaseRun;
}

export interface CaseRun {
  run: () => void;
  dispose: () => void;
  algorithm?: { name: string; executedFlops: number };
  /** Which of an op's paths runs here (the same FLOPs), shown after the shape. */
  path?: string;
}

function rand(e: Engine, shape: number[], seed: number): Tensor {
  const n = shape.reduce((p, d) => p * d, 1);
  return e.tensor(gaussianNoise(n, seed), shape);
}

const disposeAll = (...ts: Tensor[]) => () => ts.forEach((t) => t.dispose());

function matmulCase(m: number, k: number, n: number, quick = false): BenchCase {
  return {
    family: 'matmul', name: `${m}x${k} · ${k}x${n}`, flops: 2 * m * k * n, target: 0.5, quick,
    peer: { op: 'matmul', m, k, n },
    setup(e) {
      const a = rand(e, [m, k], 1);
      const b = rand(e, [k, n], 2);
      return { run: () => void ops.matmul(a, b), dispose: disposeAll(a, b) };
    },
  };
}

function convCase(cin: number, cout: number, size: number, k: number, where: string, quick = false): BenchCase {
  return {
    family: `conv2d ${k}x${k}`, name: `${cin}→${cout} @${size}² (${where})`, flops: 2 * cin * cout * k * k * size * size, target: 0.5, quick,
    peer: { op: 'conv2d', n: 1, h: size, w: size, cin, cout, k },
    setup(e) {
      const x = rand(e, [1, cin, size, size], 3);
      const w = rand(e, [cout, cin, k, k], 4);
      const b = rand(e, [cout], 5);
      const algorithm = ops.conv2dAlgorithm(e, x.shape, w.shape);
      return {
        run: () => void ops.conv2d(x, w, { bias: b }), dispose: disposeAll(x, w, b),
        algorithm: algorithm.name === 'winograd' ? { name: 'Winograd F(2×2, 3×3)', executedFlops: 2 * algorithm.multiplyAdds } : undefined,
      };
    },
  };
}

function groupNormCase(c: number, size: number, scaleShift: boolean, quick = false): BenchCase {
  const n = c * size * size;
  return {
    family: 'GroupNorm+SiLU', name: `${c}ch @${size}²${scaleShift ? ' + scale-shift' : ''}`,
    // Counted as softmax's: x read once and y written once (what any kernel must move), though this
    // one reads x twice, once for the statistics (one pass: Welford) and once to apply; + γ, β (and
    // the scale-shift's two per channel).
    bytes: 2 * 4 * n + (scaleShift ? 4 : 2) * 4 * c,
    target: 0.6, quick,
    setup(e) {
      const x = rand(e, [1, c, size, size], 6);
      const g = rand(e, [c], 7);
      const b = rand(e, [c], 8);
      const ss = rand(e, [1, 2 * c], 9);
      return { run: () => void ops.groupNorm(x, g, b, { silu: true, scaleShift: scaleShift ? ss : undefined }), dispose: disposeAll(x, g, b, ss) };
    },
  };
}

function attentionCase(heads: number, tokens: number, where: string, quick = false): BenchCase {
  const d = 64;
  return {
    family: 'attention', name: `${heads} heads × ${tokens} tokens, d=${d} (${where})`, flops: 4 * heads * tokens * tokens * d, target: 0.4, quick,
    setup(e) {
      const qkv = rand(e, [1, 3 * heads * d, tokens], 10);
      const composite = ops.attentionMaterialisesWeights(e, d, false, { T: tokens, matrices: heads });
      return { run: () => void ops.qkvAttention(qkv, heads), dispose: disposeAll(qkv), path: composite ? 'matmul + softmax' : 'fused' };
    },
  };
}

function unetCase(label: string, flags: UNetFlags, block: number, batch: number, opts: { quick?: boolean; full?: boolean | 'cpu' } = {}): BenchCase {
  return {
    family: 'U-Net forward', name: `${label} batch ${batch} → b${block}`, images: batch, ...opts,
    peer: { op: 'unet-forward', flags, batch, block },
    setup(e) {
      const unet = UNet.random(e, flags, 1);
      const size = flags.image_size;
      const x = rand(e, [batch, 3, size, size], 11);
      const t = new Array(batch).fill(150);
      return {
        run: () => void unet.forward(x, t, { taps: [block] }),
        dispose: () => {
          x.dispose();
          for (const p of unet.parameters().values()) p.dispose();
        },
      };
    },
  };
}

/**
 * One pretraining step (the paper's Eq. 4: noise, forward, MSE on ε, backward, Adam) of `batch`
 * images; throughput in images/s. CLARIFICATIONS' PyTorch-CPU anchor for 2 cores: 6.9 img/s at batch
 * 16 (guided-diffusion's model); `--peer torch` runs this same step (30–38 img/s with OpenBLAS on 2 cores).
 */
function trainingCase(label: string, flags: UNetFlags, batch: number, opts: { quick?: boolean; full?: boolean | 'cpu' } = {}): BenchCase {
  return {
    family: 'U-Net training', name: `${label} batch ${batch}`, images: batch, ...opts,
    peer: { op: 'unet-train', flags, batch },
    setup(e) {
      const unet = UNet.random(e, flags, 1);
      const params = unet.parameters();
      const adam = new Adam(e, params, { lr: 1e-4 });
      const size = flags.image_size;
      const shape = [batch, unet.plan.flags.in_channels, size, size];
      const x0 = rand(e, shape, 18);
      const eps = rand(e, shape, 19);
      const schedule = linearSchedule(1000);
      const t = Array.from({ length: batch }, (_, i) => (i * 397) % 1000);
      return {
        run: () => {
          const d = ops.sub(unet.forward(qSample(e, schedule, x0, t, eps), t, { output: true }).output!, eps);
          e.tape.backward(ops.mean(ops.mul(d, d)));
          adam.step();
          adam.zeroGrad();
        },
        dispose: () => {
          x0.dispose();
          eps.dispose();
          for (const p of params.values()) p.dispose();
        },
      };
    },
  };
}

/** CLARIFICATIONS' reference U-Net (issue 7): 32×32, 32 channels, mult 1,2,2, 2 res blocks, attention at 16 and 8; 2.0M parameters. */
export const REFERENCE_32: UNetFlags = {
  image_size: 32, in_channels: 3, num_channels: 32, num_res_blocks: 2, channel_mult: '1,2,2', attention_resolutions: '16,8',
  num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
};

export const ADM64: UNetFlags = {
  image_size: 64, num_channels: 32, num_res_blocks: 2, channel_mult: '1,1,2,2,2,2', attention_resolutions: '8,4,2',
  num_head_channels: 32, learn_sigma: true, use_scale_shift_norm: true, resblock_updown: true,
};

export const CASES: BenchCase[] = [
  matmulCase(1024, 1024, 1024, true),
  matmulCase(4096, 1024, 1024),
  convCase(256, 256, 128, 3, 'b5-b6', false),
  convCase(512, 512, 32, 3, 'b11-b12', true),
  convCase(1024, 1024, 8, 3, 'b17-b21'),
  convCase(1536, 1024, 16, 1, 'skip of b25'),
  groupNormCase(256, 64, false, true),
  groupNormCase(512, 32, true),
  attentionCase(8, 1024, 'b11 @32²', true),
  attentionCase(16, 256, 'b14 @16²'),
  attentionCase(16, 64, 'b17 @8²'),
  {
    family: 'softmax', name: '1024 rows × 1024', bytes: 2 * 4 * 1024 * 1024, target: 0.6, quick: true,
    peer: { op: 'softmax', rows: 1024, cols: 1024 },
    setup(e) {
      const x = rand(e, [1024, 1024], 12);
      return { run: () => void ops.softmax(x), dispose: disposeAll(x) };
    },
  },
  {
    family: 'layer norm', name: '257 tokens × 1024 (Attention head)', bytes: 2 * 4 * 257 * 1024 + 2 * 4 * 1024, target: 0.6,
    setup(e) {
      const x = rand(e, [257, 1024], 13);
      const w = rand(e, [1024], 14);
      const b = rand(e, [1024], 15);
      return { run: () => void ops.layerNorm(x, w, b), dispose: disposeAll(x, w, b) };
    },
  },
  {
    family: 'Adam', name: '4M parameters', bytes: 7 * 4 * 4 * 1024 * 1024, target: 0.6, quick: true,
    setup(e) {
      const p = rand(e, [4 * 1024 * 1024], 14);
      p.grad = e.keep(rand(e, [4 * 1024 * 1024], 15));
      const adam = new Adam(e, new Map([['p', p]]), { lr: 1e-3 });
      return { run: () => adam.step(), dispose: disposeAll(p) };
    },
  },
  {
    family: 'elementwise', name: 'add 16M', bytes: 3 * 4 * 16 * 1024 * 1024, quick: true,
    peer: { op: 'add', size: 16 * 1024 * 1024 },
    setup(e) {
      const a = rand(e, [16 * 1024 * 1024], 16);
      const b = rand(e, [16 * 1024 * 1024], 17);
      return { run: () => void ops.add(a, b), dispose: disposeAll(a, b) };
    },
  },
  unetCase('adm64 (64×64 reference)', ADM64, 24, 1, { quick: true }),
  unetCase('adm64 (64×64 reference)', ADM64, 37, 1),
  unetCase('adm64 (64×64 reference)', ADM64, 24, 8),
  trainingCase('reference 32×32 U-Net (2.0M parameters)', REFERENCE_32, 16, { quick: true }),
  trainingCase('reference 32×32 U-Net (2.0M parameters)', REFERENCE_32, 64, { full: 'cpu' }),
  // The whole-model targets: to b24 at batch 1, 8 and 32; the full forward at 1 and 8.
  unetCase('ADM 256×256 uncond', ADM_256_UNCOND, 24, 1, { full: 'cpu' }),
  unetCase('ADM 256×256 uncond', ADM_256_UNCOND, 24, 8, { full: 'cpu' }),
  unetCase('ADM 256×256 uncond', ADM_256_UNCOND, 24, 32, { full: 'cpu' }),
  unetCase('ADM 256×256 uncond', ADM_256_UNCOND, 37, 1, { full: 'cpu' }),
  unetCase('ADM 256×256 uncond', ADM_256_UNCOND, 37, 8, { full: 'cpu' }),
];
