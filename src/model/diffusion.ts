// The forward (noising) process of guided-diffusion with a linear β schedule (SPEC §1, paper Eq. 2)
// and a seeded Gaussian generator so feature extraction is reproducible.
import type { Engine } from '../engine/engine.ts';
import { add, mul } from '../engine/ops/elementwise.ts';
import type { Tensor } from '../engine/tensor.ts';

export interface Schedule {
  steps: number;
  /** ᾱ_t for t = 0..T−1, float64 as in guided-diffusion. */
  alphasCumprod: Float64Array;
}

/**
 * β_i = linspace(0.0001·s, 0.02·s, T), s = 1000/T; ᾱ_t = Π_{i≤t} (1 − β_i), all in float64.
 * T = 2…19 would give β_T = 20/T > 1 and a negative ᾱ (guided-diffusion asserts 0 < β ≤ 1).
 */
export function linearSchedule(steps = 1000): Schedule {
  if (!Number.isInteger(steps) || steps < 1 || (steps > 1 && steps < 20)) {
    throw new RangeError(`linearSchedule: steps must be 1 or an integer of at least 20 (fewer steps make β_T = 0.02·1000/T exceed 1), got ${steps}`);
  }
  const s = 1000 / steps;
  const lo = 0.0001 * s;
  const hi = 0.02 * s;
  const alphasCumprod = new Float64Array(steps);
  let prod = 1;
  for (let i = 0; i < steps; i++) {
    const beta = steps === 1 ? lo : lo + ((hi - lo) * i) / (steps - 1);
    prod *= 1 - beta;
    alphasCumprod[i] = prod;
  }
  return { steps, alphasCumprod };
}

function checkTimesteps(schedule: Schedule, t: readonly number[]): void {
  for (const v of t) {
    if (!Number.isInteger(v) || v < 0 || v >= schedule.steps) {
      throw new RangeError(`timestep ${v} is outside 0..${schedule.steps - 1}`);
    }
  }
}

/**
 * x_t = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε per sample (Eq. 2). The coefficients are rounded to f32
 * before multiplying, as guided-diffusion's _extract_into_tensor does.
 */
export function qSample(e: Engine, schedule: Schedule, x0: Tensor, t: readonly number[], noise: Tensor): Tensor {
  checkTimesteps(schedule, t);
  const N = x0.shape[0];
  if (t.length !== N) throw new RangeError(`qSample: ${t.length} timesteps for a batch of ${N}`);
  if (noise.shape.join() !== x0.shape.join()) throw new RangeError(`qSample: noise shape ${noise.shape} differs from x0 ${x0.shape}`);
  return e.tidy(() => {
    const bshape = [N, ...x0.shape.slice(1).map(() => 1)];
    const a = e.tensor(t.map((v) => Math.sqrt(schedule.alphasCumprod[v])), bshape, 'sqrt_alphas_cumprod');
    const b = e.tensor(t.map((v) => Math.sqrt(1 - schedule.alphasCumprod[v])), bshape, 'sqrt_one_minus_alphas_cumprod');
    return add(mul(x0, a), mul(noise, b));
  });
}

/** q(x_{t−1} | x_t, x0) at t, as guided-diffusion's GaussianDiffusion tabulates it (float64). */
export interface Posterior {
  /** The mean is coefX0·x0 + coefXt·x_t (Ho et al., Eq. 7). */
  coefX0: number;
  coefXt: number;
  /** log β̃_t, clipped: at t = 0, where β̃ is 0, that of t = 1. */
  logVariance: number;
  /** log β_t, the other end of a learned variance's range. */
  logBeta: number;
}

export function posterior(schedule: Schedule, t: number): Posterior {
  checkTimesteps(schedule, [t]);
  const ac = schedule.alphasCumprod;
  const step = (s: number) => {
    const prev = s > 0 ? ac[s - 1] : 1;
    const beta = 1 - ac[s] / prev;
    return { prev, beta, variance: (beta * (1 - prev)) / (1 - ac[s]) };
  };
  const { prev, beta } = step(t);
  return {
    coefX0: (beta * Math.sqrt(prev)) / (1 - ac[t]),
    coefXt: ((1 - prev) * Math.sqrt(1 - beta)) / (1 - ac[t]),
    logVariance: Math.log(step(Math.max(t, 1)).variance),
    logBeta: Math.log(beta),
  };
}

/**
 * Standard normal samples from a seed (xoshiro128** + Box–Muller): same seed, same noise, anywhere.
 * Seeds are 32-bit: anything else is refused, as 2³² or 0.7 would draw seed 0's noise.
 */
export function gaussianNoise(count: number, seed: number): Float32Array {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(`gaussianNoise: seed must be an integer from 0 to ${0xffffffff} (the generator's seeds are 32-bit), got ${seed}`);
  }
  let s0 = 0x9e3779b9 ^ seed;
  let s1 = 0x243f6a88 ^ Math.imul(seed, 0x85ebca6b);
  let s2 = 0xb7e15162;
  let s3 = 0x7f4a7c15 ^ (seed >>> 16);
  const next = () => {
    const r = Math.imul(((Math.imul(s1, 5) << 7) | (Math.imul(s1, 5) >>> 25)), 9) >>> 0;
    const t = s1 << 9;
    s2 ^= s0;
    s3 ^= s1;
    s1 ^= s2;
    s0 ^= s3;
    s2 ^= t;
    s3 = (s3 << 11) | (s3 >>> 21);
    return r / 4294967296;
  };
  for (let i = 0; i < 8; i++) next();
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const u1 = 1 - next();
    const u2 = next();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}
