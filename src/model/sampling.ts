// Sampling from an ε-prediction model: DDPM ancestral sampling (Ho et al., Alg. 2, with the
// fixed variance β_t that guided-diffusion uses when learn_sigma is off) and deterministic DDIM
// (η = 0) on an evenly spaced subset of the timesteps.
import type { Engine } from '../engine/engine.ts';
import { add, scale, sub } from '../engine/ops/elementwise.ts';
import { slice } from '../engine/ops/layout.ts';
import type { Tensor } from '../engine/tensor.ts';
import { gaussianNoise, linearSchedule } from './diffusion.ts';
import type { UNet } from './unet.ts';

function predictEps(unet: UNet, x: Tensor, t: number): Tensor {
  const e = unet.engine;
  const n = x.shape[0];
  const C = unet.plan.flags.in_channels;
  return e.tidy(() => {
    const out = unet.forward(x, new Array(n).fill(t), { output: true }).output!;
    return out.shape[1] === C ? out : slice(out, [0, 0], [n, C]);
  });
}

/** The number of diffusion steps T of the schedule every model here is trained with. */
export const DIFFUSION_STEPS = 1000;
/** The most images one sample() call draws. */
export const MAX_SAMPLE_COUNT = 1024;
const MAX_SEED = 2 ** 32 - 1;

export interface SampleOptions {
  /** Images to draw: an integer from 1 to MAX_SAMPLE_COUNT. */
  count: number;
  /**
   * An integer from 0 to 2^32 − 1 (default 0; the noise generator's seeds are 32-bit). x_T is
   * gaussianNoise(n, seed) and DDPM's z_t is gaussianNoise(n, seed·7919 + t + 1).
   */
  seed?: number;
  /**
   * DDIM steps (evenly spaced over the T = 1000 diffusion steps): an integer from 1 to 1000; 0 or
   * omitted for full DDPM ancestral sampling over all T steps.
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
  if (o.ddimSteps !== undefined && !isIntegerIn(o.ddimSteps, 0, DIFFUSION_STEPS)) {
    throw new RangeError(
      `sample: ddimSteps must be 0 (DDPM ancestral sampling over all ${DIFFUSION_STEPS} steps) or an integer from 1 to ${DIFFUSION_STEPS} ` +
        `(DDIM steps, at most the ${DIFFUSION_STEPS} diffusion steps), got ${o.ddimSteps}`,
    );
  }
  if (o.seed !== undefined && !isIntegerIn(o.seed, 0, MAX_SEED)) {
    throw new RangeError(`sample: seed must be an integer from 0 to ${MAX_SEED} (the noise generator's seeds are 32-bit), got ${o.seed}`);
  }
}

/**
 * Images [count, C, S, S], nominally in [−1, 1] (not clipped; imageGrid clamps). Each step awaits
 * engine.settle(), so the GPU work queued ahead stays bounded however many steps there are.
 */
export async function sample(e: Engine, unet: UNet, o: SampleOptions): Promise<Tensor> {
  checkSampleOptions(o);
  const sch = linearSchedule(DIFFUSION_STEPS);
  const ac = sch.alphasCumprod;
  const C = unet.plan.flags.in_channels;
  const S = unet.plan.flags.image_size;
  const shape = [o.count, C, S, S];
  const n = o.count * C * S * S;
  const seed = o.seed ?? 0;
  const ddim = o.ddimSteps ?? 0;
  const ts = ddim
    ? Array.from({ length: ddim }, (_, i) => Math.round(((ddim - 1 - i) * (sch.steps - 1)) / Math.max(1, ddim - 1)))
    : Array.from({ length: sch.steps }, (_, i) => sch.steps - 1 - i);
  let x = e.keep(e.tensor(gaussianNoise(n, seed), shape, 'x_T'));
  try {
    for (const [k, t] of ts.entries()) {
      const next = e.noGrad(() => e.tidy(() => {
        const eps = predictEps(unet, x, t);
        const abar = ac[t];
        if (ddim) {
          // x̂0 = (x − sqrt(1−ᾱ_t)·ε)/sqrt(ᾱ_t); x_prev = sqrt(ᾱ_prev)·x̂0 + sqrt(1−ᾱ_prev)·ε
          const prev = k + 1 < ts.length ? ac[ts[k + 1]] : 1;
          const x0 = scale(sub(x, scale(eps, Math.sqrt(1 - abar))), 1 / Math.sqrt(abar));
          return add(scale(x0, Math.sqrt(prev)), scale(eps, Math.sqrt(1 - prev)));
        }
        // mean = (x − β_t/sqrt(1−ᾱ_t)·ε)/sqrt(α_t); x_{t−1} = mean + sqrt(β_t)·z (no noise at t = 0)
        const alpha = t > 0 ? abar / ac[t - 1] : abar;
        const beta = 1 - alpha;
        const meanX = scale(sub(x, scale(eps, beta / Math.sqrt(1 - abar))), 1 / Math.sqrt(alpha));
        if (t === 0) return meanX;
        const z = e.tensor(gaussianNoise(n, seed * 7919 + t + 1), shape, 'z');
        return add(meanX, scale(z, Math.sqrt(beta)));
      }));
      x.dispose();
      x = e.keep(next);
      o.onStep?.(k + 1, ts.length);
      await e.settle();
    }
  } catch (err) {
    x.dispose();
    throw err;
  }
  return x;
}

/** [n, C, S, S] in [−1, 1] → an RGB grid image (rows × cols tiles, 2-pixel gaps) as uint8. */
export function imageGrid(data: Float32Array, n: number, C: number, S: number, cols = Math.ceil(Math.sqrt(n))): { width: number; height: number; rgb: Uint8Array } {
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
          rgb[((oy + y) * width + ox + x) * 3 + c] = Math.round(Math.min(1, Math.max(-1, v)) * 127.5 + 127.5);
        }
      }
    }
  }
  return { width, height, rgb };
}
