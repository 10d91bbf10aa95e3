// Layers built from the primitive ops (their gradients come from the primitives' rules):
// Linear, cross-entropy, dropout, BatchNorm2d and bilinear resizing.
import { shapeString, type Tensor } from '../tensor.ts';
import { add, addScalar, div, mul, scale, sqrt, sub } from './elementwise.ts';
import { gatherColumn } from './gather.ts';
import { permute, reshape } from './layout.ts';
import { matmul } from './matmul.ts';
import { normalizeRows } from './normalize.ts';
import { mean, sum } from './reduce.ts';
import { logSoftmax } from './softmax.ts';

/** y = x·Wᵀ + b over the last axis (PyTorch nn.Linear, W [out, in]). */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor): Tensor {
  const e = x.engine;
  const inF = weight.shape[1];
  if (weight.rank !== 2 || x.shape[x.rank - 1] !== inF) {
    throw new RangeError(`linear: ${x.label} ${shapeString(x.shape)} does not end in ${inF} features of ${weight.label} ${shapeString(weight.shape)}`);
  }
  return e.tidy(() => {
    const flat = reshape(x, [-1, inF]);
    return reshape(matmul(flat, weight, { transB: true, bias }), [...x.shape.slice(0, -1), weight.shape[0]]);
  });
}

/**
 * Mean cross-entropy of logits [N, K] against integer labels: −mean log-softmax(logits)[label],
 * the label's column gathered (a one-hot product would give 0·(−∞) = NaN where another class's
 * logit is −∞; PyTorch's loss is finite there).
 */
export function crossEntropy(logits: Tensor, labels: readonly number[]): Tensor {
  const e = logits.engine;
  const [N, K] = logits.shape;
  if (logits.rank !== 2 || labels.length !== N) throw new RangeError(`crossEntropy: logits ${shapeString(logits.shape)} with ${labels.length} labels`);
  if (N === 0 || K === 0) throw new RangeError(`crossEntropy: logits ${shapeString(logits.shape)}: a mean over ${N} samples of ${K} classes is undefined`);
  labels.forEach((y, i) => {
    if (!Number.isInteger(y) || y < 0 || y >= K) throw new RangeError(`crossEntropy: label ${y} of sample ${i} is outside 0..${K - 1}`);
  });
  return e.tidy(() => scale(sum(gatherColumn(logSoftmax(logits), labels)), -1 / N));
}

/**
 * Inverted dropout with a seeded mask (identity when p = 0 or not training): each value is zeroed
 * with probability p, the rest scaled by 1/(1 − p). `seed`: one stream for the whole tensor, or one
 * per row of the first axis (so a row's mask does not depend on which rows share its tensor).
 */
export function dropout(x: Tensor, p: number, training: boolean, seed: number | readonly number[]): Tensor {
  if (!training || p === 0) return x;
  if (!(p > 0 && p < 1)) throw new RangeError(`dropout: p = ${p} must be in [0, 1)`);
  const seeds = typeof seed === 'number' ? [seed] : seed;
  if (seeds.length !== 1 && seeds.length !== x.shape[0]) throw new RangeError(`dropout: ${seeds.length} seeds for ${x.shape[0]} rows of ${x.label} ${shapeString(x.shape)}`);
  const mask = new Float32Array(x.size);
  const per = x.size / seeds.length;
  seeds.forEach((rowSeed, r) => {
    let s = rowSeed >>> 0;
    for (let i = r * per; i < (r + 1) * per; i++) {
      s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
      mask[i] = s / 4294967296 >= p ? 1 / (1 - p) : 0;
    }
  });
  return x.engine.tidy(() => mul(x, x.engine.tensor(mask, x.shape, 'dropout.mask')));
}

export interface BatchNormState {
  runningMean: Tensor;
  runningVar: Tensor;
  /** num_batches_tracked */
  batches: number;
}

/**
 * BatchNorm2d. Training: normalise with the batch's biased variance and move the running
 * statistics by `momentum` using the unbiased variance (× n/(n−1), n = N·H·W), as PyTorch does.
 * Evaluation: normalise with the running statistics.
 */
export function batchNorm2d(
  x: Tensor, weight: Tensor, bias: Tensor, state: BatchNormState,
  opts: { training: boolean; momentum?: number; eps?: number },
): Tensor {
  const e = x.engine;
  const [N, C, H, W] = x.shape;
  const eps = opts.eps ?? 1e-5;
  const perChannel = (t: Tensor) => reshape(t, [C, 1, 1]);
  if (!opts.training) {
    return e.tidy(() => {
      const std = e.noGrad(() => sqrt(addScalar(state.runningVar, eps)));
      const xn = div(sub(x, perChannel(state.runningMean)), perChannel(std));
      return add(mul(xn, perChannel(weight)), perChannel(bias));
    });
  }
  const n = N * H * W;
  // Updated in place by copies of C values: a smaller tensor was written past its end.
  for (const [name, t] of [['runningMean', state.runningMean], ['runningVar', state.runningVar]] as const) {
    if (t.size !== C) throw new RangeError(`batchNorm2d: ${name} ${t.label} ${shapeString(t.shape)} does not match the ${C} channels of ${x.label} ${shapeString(x.shape)}`);
  }
  // As torch: one value per channel has no batch variance to normalise by.
  if (n < 2) throw new RangeError(`batchNorm2d: training needs more than one value per channel, got input [${x.shape}]`);
  const momentum = opts.momentum ?? 0.1;
  e.noGrad(() => {
    const [m, v] = e.tidy(() => {
      const bm = mean(x, [0, 2, 3]);
      const centred = sub(x, reshape(bm, [C, 1, 1]));
      const bv = scale(mean(mul(centred, centred), [0, 2, 3]), n / (n - 1));
      return [
        add(scale(state.runningMean, 1 - momentum), scale(bm, momentum)),
        add(scale(state.runningVar, 1 - momentum), scale(bv, momentum)),
      ];
    });
    // In place, so whoever holds the running-stat tensors (a state dict) sees the update.
    e.copyBuffer(m.buffer, 0, state.runningMean.buffer, 0, m.byteLength);
    e.copyBuffer(v.buffer, 0, state.runningVar.buffer, 0, v.byteLength);
    state.runningMean.markWritten();
    state.runningVar.markWritten();
    m.dispose();
    v.dispose();
    state.batches++;
  });
  return e.tidy(() => {
    // Channels to rows: [C, N·H·W], normalise each row, and back.
    const rows = reshape(permute(reshape(x, [N, C, H * W]), [1, 0, 2]), [C, n]);
    const xn = permute(reshape(normalizeRows(rows, n, eps), [C, N, H * W]), [1, 0, 2]);
    return reshape(add(mul(xn, reshape(weight, [C, 1])), reshape(bias, [C, 1])), x.shape);
  });
}

/**
 * Bilinear resize with align_corners=False (F.interpolate(mode='bilinear')): out = Rh · x · Rwᵀ
 * per plane, with PyTorch's source-coordinate rule src = (dst + ½)·in/out − ½ clamped at 0.
 * As two matmuls its gradient is Rhᵀ · dy · Rw. The same size is the identity.
 */
export function resizeBilinear(x: Tensor, outH: number, outW: number): Tensor {
  const e = x.engine;
  const [N, C, H, W] = x.shape;
  if (x.rank !== 4) throw new RangeError(`resizeBilinear: ${x.label} ${shapeString(x.shape)} must be [N,C,H,W]`);
  if (H === 0 || W === 0 || !(outH >= 1 && outW >= 1)) throw new RangeError(`resizeBilinear: ${x.label} ${shapeString(x.shape)} to ${outH}x${outW}: input and output need at least one pixel`);
  if (H === outH && W === outW) return x;
  return e.tidy(() => {
    const rh = e.tensor(interpolationMatrix(H, outH), [outH, H], 'bilinear.rows');
    const rw = e.tensor(interpolationMatrix(W, outW), [outW, W], 'bilinear.cols');
    const planes = reshape(x, [N * C, H, W]);
    const y = matmul(rh, matmul(planes, rw, { transB: true }));
    return reshape(y, [N, C, outH, outW]);
  });
}

export function interpolationMatrix(inSize: number, outSize: number): Float32Array {
  const m = new Float32Array(outSize * inSize);
  const ratio = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const src = Math.max((o + 0.5) * ratio - 0.5, 0);
    const i0 = Math.min(Math.floor(src), inSize - 1);
    const i1 = Math.min(i0 + 1, inSize - 1);
    const l1 = src - i0;
    m[o * inSize + i0] += 1 - l1;
    m[o * inSize + i1] += l1;
  }
  return m;
}
