// Sampling from an ε-prediction model as guided-diffusion samples (clip_denoised=True): each step
// estimates x̂0 = (x_t − sqrt(1−ᾱ_t)·ε̂)/sqrt(ᾱ_t) and clamps it to [−1, 1]; DDPM ancestral
// sampling then takes the posterior mean of q(x_{t−1} | x_t, x̂0) with the variance guided-diffusion
// gives the model (learn_sigma off: the fixed β_t of FIXED_LARGE; on: LEARNED_RANGE, below),
// deterministic DDIM (η = 0) re-derives ε from the clamped x̂0, on timesteps spaced as
// space_timesteps spaces them.
import type { Engine } from '../engine/engine.ts';
import { add, addScalar, clampSymmetric, exp, mul, scale, sub } from '../engine/ops/elementwise.ts';
import { slice } from '../engine/ops/layout.ts';
import { sum } from '../engine/ops/reduce.ts';
import { hashSeeds } from '../engine/random.ts';
import type { Tensor } from '../engine/tensor.ts';
import { gaussianNoise, linearSchedule, posterior } from './diffusion.ts';
import type { UNet } from './unet.ts';

/** The U-Net's output: ε̂ (its first C channels) and, for a learn_sigma model, v (its other C channels). */
function predict(unet: UNet, x: Tensor, t: number): { out: Tensor; eps: Tensor; v?: Tensor } {
  const n = x.shape[0];
  const C = unet.plan.flags.in_channels;
  const out = unet.forward(x, new Array(n).fill(t), { output: true }).output!;
  if (out.shape[1] === C) return { out, eps: out };
  return { out, eps: slice(out, [0, 0], [n, C]), v: slice(out, [0, C], [n, 2 * C]) };
}

/** The number of diffusion steps T of the schedule every model here is trained with. */
export const DIFFUSION_STEPS = 1000;
/** The most images one sample() call draws. */
export const MAX_SAMPLE_COUNT = 1024;
const MAX_SEED = 2 ** 32 - 1;
/** Steps between reads of the finite-checks: each read waits for the GPU to catch up. */
const CHECK_EVERY = 10;

export interface SampleOptions {
  /** Images to draw: an integer from 1 to MAX_SAMPLE_COUNT. */
  count: number;
  /**
   * An integer from 0 to 2^32 − 1 (default 0; the noise generator's seeds are 32-bit). x_T is
   * gaussianNoise(n, seed) and DDPM's z_t is gaussianNoise(n, hashSeeds(seed, t)) (a hashed stream:
   * seed·7919 + t + 1, as it was, made some seeds' z_t another's x_T, or their own).
   */
  seed?: number;
  /**
   * DDIM steps: an integer from 2 to 1000, at the timesteps of guided-diffusion's "ddimN" (a whole
   * stride: 980, 960, …, 0 for 50) or, where no stride gives n steps, its "N" (ddimTimesteps); 0
   * or omitted for full DDPM ancestral sampling over all T steps.
   */
  ddimSteps?: number;
  onStep?: (done: number, total: number) => void;
}

function isIntegerIn(v: number, min: number, max: number): boolean {
  return Number.isInteger(v) && v >= min && v <= max;
}

/** Throws a RangeError naming the first option outside its range. sample() calls it before allocating anything. */
export function checkSampleOptions(o: SampleOptions): void {
  if (!isIntegerIn(o.count, 1, MAX_SAMPLE_COUNT)) {
    throw new RangeError(`sample: count (images to draw) must be an integer from 1 to ${MAX_SAMPLE_COUNT}, got ${o.count}`);
  }
  if (o.ddimSteps !== undefined && (!isIntegerIn(o.ddimSteps, 0, DIFFUSION_STEPS) || o.ddimSteps === 1)) {
    throw new RangeError(
      `sample: ddimSteps must be 0 (DDPM ancestral sampling over all ${DIFFUSION_STEPS} steps) or an integer from 2 to ${DIFFUSION_STEPS} ` +
        `(DDIM steps, at most the ${DIFFUSION_STEPS} diffusion steps; one step from pure noise would return noise), got ${o.ddimSteps}`,
    );
  }
  if (o.seed !== undefined && !isIntegerIn(o.seed, 0, MAX_SEED)) {
    throw new RangeError(`sample: seed must be an integer from 0 to ${MAX_SEED} (the noise generator's seeds are 32-bit), got ${o.seed}`);
  }
}

/**
 * Images [count, C, S, S] in [−1, 1]. Each step awaits engine.settle(), so the GPU work queued
 * ahead stays bounded however many steps there are.
 */
export async function sample(e: Engine, unet: UNet, o: SampleOptions): Promise<Tensor> {
  checkSampleOptions(o);
  const sch = linearSchedule(DIFFUSION_STEPS);
  const ac = sch.alphasCumprod;
  const C = unet.plan.flags.in_channels;
  const S = unet.plan.flags.image_size;
  const shape = [o.count, C, S, S];
  const n = o.count * C * S * S;
  // The U-Net splits its own work to fit a binding; x and the output (2C channels for learn_sigma) are bound whole.
  const perImage = 4 * unet.plan.outChannels * S * S;
  if (o.count * perImage > e.maxBindingBytes) {
    throw new RangeError(`sample: ${o.count} images of ${S}×${S} bind ${o.count * perImage} bytes at once, over this device's largest storage binding (${e.maxBindingBytes}): draw ${e.perBinding(perImage)} or fewer at a time (--count)`);
  }
  const seed = o.seed ?? 0;
  const ddim = o.ddimSteps ?? 0;
  const ts = ddim ? ddimTimesteps(sch.steps, ddim) : Array.from({ length: sch.steps }, (_, i) => sch.steps - 1 - i);
  let x = e.keep(e.tensor(gaussianNoise(n, seed), shape, 'x_T'));
  // Per step, Σ 0·(ε̂, v): 0, or NaN where the prediction holds a NaN or ±Inf, which the clamp
  // of x̂0 would otherwise turn into a plausible −1 or 1 (an all-black image). Read every
  // CHECK_EVERY steps and at the end, so a bad prediction stops the run within that many steps.
  // The checks not yet read (the steps from `checked` on), each freed once read.
  let checks: Tensor[] = [];
  let checked = 0;
  const readChecks = async () => {
    const bad = (await e.readTensors(checks)).findIndex((c) => !Number.isFinite(c[0]));
    if (bad >= 0) {
      const step = checked + bad;
      throw new RangeError(`sample: the U-Net's prediction holds NaN or Inf at step ${step + 1} of ${ts.length} (t = ${ts[step]}): look for NaN/Inf or overflowing weights in the checkpoint`);
    }
    for (const c of checks) c.dispose();
    checked += checks.length;
    checks = [];
  };
  try {
    for (const [k, t] of ts.entries()) {
      const next = e.noGrad(() => e.tidy(() => {
        const { out, eps, v } = predict(unet, x, t);
        checks.push(e.keep(sum(scale(out, 0))));
        const abar = ac[t];
        const x0 = clampSymmetric(scale(sub(x, scale(eps, Math.sqrt(1 - abar))), 1 / Math.sqrt(abar)), 1);
        if (ddim) {
          // ε′ = (x − sqrt(ᾱ_t)·x̂0)/sqrt(1−ᾱ_t); x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1−ᾱ_prev)·ε′
          const prev = k + 1 < ts.length ? ac[ts[k + 1]] : 1;
          const epsClipped = scale(sub(x, scale(x0, Math.sqrt(abar))), 1 / Math.sqrt(1 - abar));
          return add(scale(x0, Math.sqrt(prev)), scale(epsClipped, Math.sqrt(1 - prev)));
        }
        // x_{t−1} = the posterior mean of x̂0 and x_t + σ_t·z (no noise at t = 0).
        const q = posterior(sch, t);
        const meanX = add(scale(x0, q.coefX0), scale(x, q.coefXt));
        if (t === 0) return meanX;
        const z = e.tensor(gaussianNoise(n, hashSeeds(seed, t)), shape, 'z');
        if (!v) return add(meanX, scale(z, Math.exp(q.logBeta / 2)));
        // LEARNED_RANGE (Nichol & Dhariwal, Eq. 15): log σ² = f·log β_t + (1 − f)·log β̃_t, f = (v + 1)/2.
        const sigma = exp(addScalar(scale(v, (q.logBeta - q.logVariance) / 4), (q.logBeta + q.logVariance) / 4));
        return add(meanX, mul(sigma, z));
      }));
      x.dispose();
      x = e.keep(next);
      if ((k + 1) % CHECK_EVERY === 0 || k + 1 === ts.length) await readChecks();
      o.onStep?.(k + 1, ts.length);
      await e.settle();
    }
  } catch (err) {
    x.dispose();
    throw err;
  } finally {
    for (const c of checks) c.dispose();
  }
  return x;
}

/**
 * The timesteps of `n` DDIM steps over T, last first, as guided-diffusion's space_timesteps
 * (respace.py) spaces them: "ddimN", range(0, T, stride) for the first stride that gives exactly n
 * steps (980, 960, …, 0 for 50; stride 143 for 7), and where no stride does, "N": n steps at
 * round(k·(T − 1)/(n − 1)), the position summed in float64 and rounded half to even as Python's
 * round() does.
 */
export function ddimTimesteps(T: number, n: number): number[] {
  for (let stride = 1; stride < T; stride++) {
    if (Math.ceil(T / stride) === n) return Array.from({ length: n }, (_, i) => (n - 1 - i) * stride);
  }
  const fracStride = (T - 1) / (n - 1);
  const steps: number[] = [];
  for (let k = 0, position = 0; k < n; k++, position += fracStride) steps.push(roundHalfToEven(position));
  return steps.reverse();
}

function roundHalfToEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** [n, C, S, S] in [−1, 1] → an RGB grid image (rows × cols tiles, 2-pixel gaps) as uint8. */
export function imageGrid(data: Float32Array, n: number, C: number, S: number, cols = Math.ceil(Math.sqrt(n))): { width: number; height: number; rgb: Uint8Array } {
  // Grey is shown in all three colours; two or four channels have no picture (a 4th was dropped).
  if (C !== 1 && C !== 3) throw new RangeError(`imageGrid: images of ${C} channels have no RGB picture; it shows 1 (grey) or 3 (RGB)`);
  const rows = Math.ceil(n / cols);
  const gap = 2;
  const width = cols * (S + gap) + gap;
  const height = rows * (S + gap) + gap;
  const rgb = new Uint8Array(width * height * 3).fill(255);
  for (let i = 0; i < n; i++) {
    const ox = gap + (i % cols) * (S + gap);
    const oy = gap + Math.floor(i / cols) * (S + gap);
    for (let y = 0; y < S; y++) {
      for (let x = 0; x < S; x++) {
        for (let c = 0; c < 3; c++) {
          const v = data[((i * C + Math.min(c, C - 1)) * S + y) * S + x];
          // As guided-diffusion's image_sample.py: ((x + 1)·127.5).clamp(0, 255).to(uint8) in f32,
          // which truncates (in f64, 95 of the 256 levels k/127.5 − 1 came out a level apart from it).
          rgb[((oy + y) * width + ox + x) * 3 + c] = Math.floor(Math.min(255, Math.max(0, Math.fround(Math.fround(v + 1) * 127.5))));
        }
      }
    }
  }
  return { width, height, rgb };
}
