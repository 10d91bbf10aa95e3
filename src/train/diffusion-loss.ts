// guided-diffusion's training loss (GaussianDiffusion.training_losses, loss_type MSE, the default):
// the MSE of the predicted noise (the paper's Eq. 4), and for a learn_sigma model the variational
// bound term L_vb on its variance output v, added as is (Nichol & Dhariwal's hybrid loss). L_vb sees
// the predicted mean detached, so it trains v and what feeds it; in bits per dimension, per image:
// KL(q(x_{t−1} | x_t, x0) ‖ p(x_{t−1} | x_t)) for t > 0, the discretised decoder's −log p(x0 | x1)
// at t = 0 (gaussian_diffusion.py _vb_terms_bpd, losses.py).
import { add, addScalar, clampMin, exp, log1mexp, logSigmoid, mul, neg, scale, square, sub } from '../engine/ops/elementwise.ts';
import { reshape, slice } from '../engine/ops/layout.ts';
import { mean } from '../engine/ops/reduce.ts';
import type { Tensor } from '../engine/tensor.ts';
import { posterior, type Schedule } from '../model/diffusion.ts';

export interface DiffusionBatch {
  x0: Tensor;
  /** x0's values on the CPU: the decoder term at t = 0 treats x0 = ±1 (the ends of 8-bit data) apart. */
  x0Data: Float32Array;
  xt: Tensor;
  noise: Tensor;
  t: readonly number[];
}

/**
 * The mean over the batch of MSE(ε̂, ε) (+ L_vb when the output holds C more channels, v). `output`
 * is the model's [N, C or 2C, H, W] at x_t.
 */
export function diffusionLoss(schedule: Schedule, b: DiffusionBatch, output: Tensor): Tensor {
  const [N, C, H, W] = b.x0.shape;
  const epsHat = output.shape[1] === C ? output : slice(output, [0, 0], [N, C]);
  const mse = mean(square(sub(epsHat, b.noise)));
  if (output.shape[1] === C) return mse;
  return add(mse, mean(variationalBound(schedule, b, epsHat, slice(output, [0, C], [N, 2 * C]), [N, C * H * W])));
}

/** L_vb of each image [N], in bits per dimension. */
function variationalBound(schedule: Schedule, b: DiffusionBatch, epsHat: Tensor, v: Tensor, rows: [number, number]): Tensor {
  const e = v.engine;
  const N = b.t.length;
  const q = b.t.map((t) => posterior(schedule, t));
  const perImage = (values: number[], label: string) => e.tensor(Float32Array.from(values), [N, 1, 1, 1], label);
  // The true posterior's mean and the model's (from x̂0 of ε̂, unclipped), neither recording a gradient.
  const { meanTrue, meanModel } = e.noGrad(() => {
    const ac = b.t.map((t) => schedule.alphasCumprod[t]);
    const x0Hat = sub(mul(b.xt, perImage(ac.map((a) => Math.sqrt(1 / a)), 'sqrt_recip_alphas_cumprod')), mul(epsHat, perImage(ac.map((a) => Math.sqrt(1 / a - 1)), 'sqrt_recipm1_alphas_cumprod')));
    const c1 = perImage(q.map((p) => p.coefX0), 'posterior_mean_coef1');
    const c2xt = mul(b.xt, perImage(q.map((p) => p.coefXt), 'posterior_mean_coef2'));
    return { meanTrue: add(mul(b.x0, c1), c2xt), meanModel: add(mul(x0Hat, c1), c2xt) };
  });
  // LEARNED_RANGE: log σ² = log β̃_t + (v + 1)/2·(log β_t − log β̃_t).
  const trueLogVariance = perImage(q.map((p) => p.logVariance), 'posterior_log_variance_clipped');
  const half = perImage(q.map((p) => (p.logBeta - p.logVariance) / 2), 'log_variance_half_range');
  const logVariance = add(mul(v, half), add(trueLogVariance, half));
  const bits = (perElement: Tensor) => scale(mean(reshape(perElement, rows), [1]), 1 / Math.LN2);
  // normal_kl: ½·(−1 + log σ² − log β̃ + exp(log β̃ − log σ²) + (μ̃ − μ)²·exp(−log σ²)).
  const kl = scale(add(addScalar(sub(logVariance, trueLogVariance), -1), add(exp(sub(trueLogVariance, logVariance)), mul(square(sub(meanTrue, meanModel)), exp(neg(logVariance))))), 0.5);
  const klBits = bits(kl);
  const decoded = b.t.map((t) => (t === 0 ? 1 : 0));
  if (!decoded.includes(1)) return klBits;
  const atZero = e.tensor(Float32Array.from(decoded), [N], 't_is_0');
  const notZero = e.tensor(Float32Array.from(decoded, (d) => 1 - d), [N], 't_is_not_0');
  return add(mul(klBits, notZero), mul(bits(neg(discretizedGaussianLogLikelihood(b.x0, b.x0Data, meanModel, logVariance))), atZero));
}

/**
 * log p(x0 | x1) per value under N(μ, σ²) discretised to 8-bit bins of width 2/255, the outer bins
 * open-ended (losses.py discretized_gaussian_log_likelihood, its tanh approximation of Φ, each
 * probability clamped to ≥ 1e-12). `x0Data` is x0 on the CPU: x0 = ±1 takes the open bins.
 *
 * Evaluated without cancellation: ½·(1 + tanh(u)) = σ(2u), so log Φ(z₊) = log σ(a) and
 * log(1 − Φ(z₋)) = log σ(−b) with a = 2u(z₊), b = 2u(z₋), and the bin's
 * Φ(z₊) − Φ(z₋) = σ(a) − σ(b) = σ(a)·σ(−b)·(1 − e^−(a−b)), where
 * a − b = 2√(2/π)·(z₊ − z₋)·(1 + 0.044715·(z₊² + z₊z₋ + z₋²)) and z₊ − z₋ = (2/255)/σ. The
 * difference of two CDFs near 1 (losses.py's form) kept only a few bits in a tail, fewer still with
 * an adapter's tanh a few ulp off.
 */
export function discretizedGaussianLogLikelihood(x0: Tensor, x0Data: Float32Array, meanModel: Tensor, logVariance: Tensor): Tensor {
  const e = logVariance.engine;
  const mask = (pick: (x: number) => boolean, label: string) => e.tensor(x0Data.map((x) => (pick(x) ? 1 : 0)), x0.shape, label);
  const centered = sub(x0, meanModel);
  const invStd = exp(scale(logVariance, -0.5));
  const zPlus = mul(invStd, addScalar(centered, 1 / 255));
  const zMinus = mul(invStd, addScalar(centered, -1 / 255));
  // 2u(z) = 2√(2/π)·(z + 0.044715·z³), Φ(z) ≈ σ(2u(z)).
  const c = 2 * Math.sqrt(2 / Math.PI);
  const twiceU = (z: Tensor) => scale(add(z, scale(mul(square(z), z), 0.044715)), c);
  const logCdfPlus = logSigmoid(twiceU(zPlus));
  const logOneMinusCdfMin = logSigmoid(neg(twiceU(zMinus)));
  const cubicGrowth = addScalar(scale(add(add(square(zPlus), mul(zPlus, zMinus)), square(zMinus)), 0.044715), 1);
  const gap = mul(scale(invStd, c * (2 / 255)), cubicGrowth);
  const logCdfDelta = add(add(logCdfPlus, logOneMinusCdfMin), log1mexp(gap));
  // log(clamp(p, min=1e-12)), as losses.py.
  const floor = Math.log(Math.fround(1e-12));
  return add(
    add(mul(clampMin(logCdfPlus, floor), mask((x) => x < -0.999, 'x0_at_-1')), mul(clampMin(logOneMinusCdfMin, floor), mask((x) => x > 0.999, 'x0_at_1'))),
    mul(clampMin(logCdfDelta, floor), mask((x) => x >= -0.999 && x <= 0.999, 'x0_inside')),
  );
}
