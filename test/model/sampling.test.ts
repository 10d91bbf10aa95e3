// Sampling: a full 1000-step DDPM run on a tiny U-Net (it used to die with SIGSEGV near step 500
// on lavapipe: the GPU backlog grew every step), and option checks before anything is allocated.
import { existsSync, readFileSync } from 'node:fs';
import t from 'tap';
import { hashSeeds } from '../../src/engine/random.ts';
import { gaussianNoise } from '../../src/model/diffusion.ts';
import { checkSampleOptions, ddimTimesteps, imageGrid, sample, type SampleOptions } from '../../src/model/sampling.ts';
import { UNet } from '../../src/model/unet.ts';
import { maxRelError, testEngine } from '../helpers/check.ts';

const e = await testEngine();
// One level, no downsampling, 8×8: about 50 dispatches a step.
const tiny = {
  image_size: 8, num_channels: 32, num_res_blocks: 1, channel_mult: '1', attention_resolutions: '',
  num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
};

/** ᾱ_t of guided-diffusion's linear schedule: β_i = linspace(1e-4, 0.02, 1000), ᾱ_t = Π_{i≤t} (1 − β_i). */
function alphasCumprod(): number[] {
  const out: number[] = [];
  let prod = 1;
  for (let i = 0; i < 1000; i++) {
    prod *= 1 - (1e-4 + ((0.02 - 1e-4) * i) / 999);
    out.push(prod);
  }
  return out;
}

function memoryMappings(): number | undefined {
  return existsSync('/proc/self/maps') ? readFileSync('/proc/self/maps', 'utf8').split('\n').length : undefined;
}

t.test('a full 1000-step DDPM run with ε̂ = 0 follows the clipped posterior mean plus sqrt(β_t)·z_t, and its GPU backlog stays bounded', async (t) => {
  const unet = UNet.random(e, tiny, 5);
  const zeroed = new Map(unet.parameters());
  for (const k of ['out.2.weight', 'out.2.bias']) zeroed.set(k, e.zeros(unet.param(k).shape));
  const count = 2;
  const seed = 3;
  const n = count * 3 * 8 * 8;
  const maps0 = memoryMappings();
  let steps = 0;
  let worstBacklog = 0;
  // Live bytes after every 100th step (the finite checks read there): each step's 1-float check
  // was kept until the run's end, 256 bytes a step.
  const live: number[] = [];
  const x = await sample(e, unet.withWeights(zeroed), {
    count, seed, ddimSteps: 0,
    onStep: (done) => {
      steps = done;
      worstBacklog = Math.max(worstBacklog, e.memoryStats().commandsInFlight);
      if (done % 100 === 0 && done < 1000) live.push(e.memoryStats().liveBytes);
    },
  });
  t.ok(live.every((b) => b === live[0]), `live bytes stay level across the steps (${live[0]} at step 100, ${live.at(-1)} at step 900)`);
  const maps1 = memoryMappings();
  t.equal(steps, 1000);
  t.same(x.shape, [count, 3, 8, 8]);

  // The recurrence by hand in float64, with the sampler's documented noise: x_T from the seed, z_t
  // from hashSeeds(seed, t); x̂0 = clamp(x_t/sqrt(ᾱ_t), ±1) (ε̂ = 0), mean = β_t·sqrt(ᾱ_{t−1})/(1−ᾱ_t)·x̂0
  // + (1−ᾱ_{t−1})·sqrt(α_t)/(1−ᾱ_t)·x_t with ᾱ_{−1} = 1, α_t = ᾱ_t/ᾱ_{t−1}; no noise at t = 0.
  const ac = alphasCumprod();
  const ref = Float64Array.from(gaussianNoise(n, seed));
  for (let step = 999; step >= 0; step--) {
    const prev = step > 0 ? ac[step - 1] : 1;
    const alpha = ac[step] / prev;
    const z = step > 0 ? gaussianNoise(n, hashSeeds(seed, step)) : null;
    for (let i = 0; i < n; i++) {
      const x0 = Math.min(1, Math.max(-1, ref[i] / Math.sqrt(ac[step])));
      const mean = ((1 - alpha) * Math.sqrt(prev) * x0 + (1 - prev) * Math.sqrt(alpha) * ref[i]) / (1 - ac[step]);
      ref[i] = mean + (z ? Math.sqrt(1 - alpha) * z[i] : 0);
    }
  }
  const got = await x.read();
  t.ok(got.every(Number.isFinite), 'every value is finite');
  const err = maxRelError(got, ref);
  t.ok(err < 1e-4, `max|x − ref| / max|ref| = ${err.toExponential(2)}`);

  // About 50 commands a step, 50,000 in all: without settle() they all queued up (and each bind
  // group costs lavapipe a memory mapping; the process died near 65,530 of them).
  t.ok(worstBacklog <= 32768 / 8 + 200, `at most ${worstBacklog} GPU commands were queued ahead of the GPU`);
  if (maps0 !== undefined && maps1 !== undefined) t.ok(maps1 - maps0 < 12000, `memory mappings grew by ${maps1 - maps0} over 1000 steps`);
  x.dispose();
});

t.test('a learn_sigma model samples with its learned variance: σ_t² = exp(f·log β_t + (1 − f)·log β̃_t), f = (v + 1)/2', async (t) => {
  const unet = UNet.random(e, { ...tiny, learn_sigma: true }, 5);
  // ε̂ = 0 and a constant v per channel (the output's channels 3..5), each its own σ_t.
  const v = [0.6, -0.8, 0];
  const weights = new Map(unet.parameters());
  weights.set('out.2.weight', e.zeros(unet.param('out.2.weight').shape));
  weights.set('out.2.bias', e.tensor(Float32Array.from([0, 0, 0, ...v]), [6]));
  const seed = 11;
  const n = 3 * 8 * 8;
  const x = await sample(e, unet.withWeights(weights), { count: 1, seed, ddimSteps: 0 });
  // By hand in float64: the posterior variance β̃_t = β_t·(1 − ᾱ_{t−1})/(1 − ᾱ_t) (guided-diffusion's
  // LEARNED_RANGE interpolates the log variance between it and β_t), the rest as in the test above.
  const ac = alphasCumprod();
  const ref = Float64Array.from(gaussianNoise(n, seed));
  for (let step = 999; step >= 0; step--) {
    const prev = step > 0 ? ac[step - 1] : 1;
    const alpha = ac[step] / prev;
    const beta = 1 - alpha;
    const z = step > 0 ? gaussianNoise(n, hashSeeds(seed, step)) : null;
    for (let i = 0; i < n; i++) {
      const x0 = Math.min(1, Math.max(-1, ref[i] / Math.sqrt(ac[step])));
      const mean = (beta * Math.sqrt(prev) * x0 + (1 - prev) * Math.sqrt(alpha) * ref[i]) / (1 - ac[step]);
      const f = (v[Math.floor(i / 64)] + 1) / 2;
      const logVariance = f * Math.log(beta) + (1 - f) * Math.log((beta * (1 - prev)) / (1 - ac[step]));
      ref[i] = mean + (z ? Math.exp(logVariance / 2) * z[i] : 0);
    }
  }
  const err = maxRelError(await x.read(), ref);
  t.ok(err < 1e-4, `max|x − ref| / max|ref| = ${err.toExponential(2)}`);
  x.dispose();
});

t.test('a prediction holding NaN or Inf is an error naming the step, not a clamped all-black image', async (t) => {
  const unet = UNet.random(e, tiny, 5);
  // A bias of NaN in one output channel: ε̂ is NaN there at every step (x̂0's clamp gave −1 for it).
  const weights = new Map(unet.parameters());
  weights.set('out.2.bias', e.tensor(Float32Array.from([0, Number.NaN, 0]), [3]));
  await t.rejects(sample(e, unet.withWeights(weights), { count: 2, ddimSteps: 5 }), /sample: the U-Net's prediction holds NaN or Inf at step 1 of 5 \(t = 800\)/);
  weights.set('out.2.bias', e.tensor(Float32Array.from([0, 0, Number.POSITIVE_INFINITY]), [3]));
  await t.rejects(sample(e, unet.withWeights(weights), { count: 1, ddimSteps: 5 }), /holds NaN or Inf at step 1 of 5/);
  // A 1000-step DDPM run stops within 10 steps of the bad one: the checks were read only after
  // the last step, so the error came after all 1000.
  let steps = 0;
  await t.rejects(sample(e, unet.withWeights(weights), { count: 1, onStep: (k) => (steps = k) }), /holds NaN or Inf at step 1 of 1000 \(t = 999\)/);
  t.ok(steps < 10, `stopped after ${steps} steps of 1000`);
  const live = e.memoryStats().liveBytes;
  const ok = await sample(e, unet, { count: 1, ddimSteps: 5 });
  t.ok((await ok.read()).every(Number.isFinite));
  ok.dispose();
  t.equal(e.memoryStats().liveBytes, live, 'the per-step checks are freed');
});

t.test('bad sampling options are refused, naming the option and its range, before anything is allocated', async (t) => {
  const unet = UNet.random(e, tiny, 6);
  const cases: [Partial<SampleOptions>, RegExp][] = [
    [{ count: 0 }, /count \(images to draw\) must be an integer from 1 to 1024, got 0/],
    [{ count: -3 }, /count .* from 1 to 1024, got -3/],
    [{ count: 1.5 }, /count .* got 1\.5/],
    [{ count: Number.NaN }, /count .* got NaN/],
    [{ count: 1025 }, /count .* from 1 to 1024, got 1025/],
    [{ ddimSteps: 5000 }, /ddimSteps must be 0 \(DDPM ancestral sampling over all 1000 steps\) or an integer from 2 to 1000 .*got 5000/],
    [{ ddimSteps: 1 }, /ddimSteps .* one step from pure noise would return noise\), got 1/],
    [{ ddimSteps: 1001 }, /ddimSteps .* got 1001/],
    [{ ddimSteps: -1 }, /ddimSteps .* got -1/],
    [{ ddimSteps: 2.5 }, /ddimSteps .* got 2\.5/],
    [{ ddimSteps: Number.POSITIVE_INFINITY }, /ddimSteps .* got Infinity/],
    [{ seed: -1 }, /seed must be an integer from 0 to 4294967295 .*got -1/],
    [{ seed: 2 ** 32 }, /seed .* got 4294967296/],
    [{ seed: 0.5 }, /seed .* got 0\.5/],
  ];
  const before = e.memoryStats();
  for (const [bad, message] of cases) {
    const o = { count: 1, ...bad };
    await t.rejects(sample(e, unet, o), message, Object.entries(o).map(([k, v]) => `${k} ${v}`).join(', '));
  }
  const after = e.memoryStats();
  t.equal(after.liveBytes, before.liveBytes, 'no tensor was made');
  t.equal(after.commandsInFlight, before.commandsInFlight, 'no GPU command was recorded');
  for (const good of [{ count: 1, ddimSteps: 0 }, { count: 1024, ddimSteps: 1000 }, { count: 1, ddimSteps: 2, seed: 2 ** 32 - 1 }, { count: 1 }]) {
    t.doesNotThrow(() => checkSampleOptions(good), `${JSON.stringify(good)} is accepted`);
  }
});

t.test('DDIM timesteps as guided-diffusion\'s space_timesteps spaces them: "ddimN" where a whole stride gives N steps, else "N"', async (t) => {
  // Expectations: guided_diffusion/respace.py's space_timesteps(1000, "ddimN") and (1000, "N"), run in Python.
  const fifty = ddimTimesteps(1000, 50);
  t.same([fifty.length, fifty[0], fifty[1], fifty.at(-1)], [50, 980, 960, 0]);
  t.same(ddimTimesteps(1000, 3), [668, 334, 0], 'ddim3: stride 334');
  t.same(ddimTimesteps(1000, 7), [858, 715, 572, 429, 286, 143, 0], 'ddim7: stride 143 (no N of 7 divides 1000)');
  t.same(ddimTimesteps(1000, 1000), Array.from({ length: 1000 }, (_, i) => 999 - i));
  // No stride gives 37 steps: "37", round(k·999/36).
  t.same(ddimTimesteps(1000, 37), [999, 971, 944, 916, 888, 860, 832, 805, 777, 749, 722, 694, 666, 638, 610, 583, 555, 527, 500, 472, 444, 416, 388, 361, 333, 305, 278, 250, 222, 194, 166, 139, 111, 83, 56, 28, 0]);
  // "667": positions k·1.5, Python's round() takes halves to even: 1.5 → 2, 4.5 → 4, 7.5 → 8, 10.5 → 10.
  t.same(ddimTimesteps(1000, 667).reverse().slice(0, 8), [0, 2, 3, 4, 6, 8, 9, 10]);
  const n999 = ddimTimesteps(1000, 999).reverse();
  t.same([n999.length, ...n999.slice(495, 503)], [999, 495, 496, 497, 498, 499, 501, 502, 503]);
});

t.test('image grids quantise as guided-diffusion\'s image_sample.py: ((x + 1)·127.5) clamped and truncated', async (t) => {
  // One grey 2 × 2 image: −1 → 0, −0.999 → 0.1275 → 0, 0 → 127.5 → 127 (rounding gave 128), 0.5 → 191.25 → 191; beyond ±1 clamped.
  const { width, rgb } = imageGrid(Float32Array.from([-1, -0.999, 0, 0.5]), 1, 1, 2, 1);
  const pixel = (x: number, y: number) => rgb[((2 + y) * width + 2 + x) * 3];
  t.same([pixel(0, 0), pixel(1, 0), pixel(0, 1), pixel(1, 1)], [0, 0, 127, 191]);
  t.equal(imageGrid(Float32Array.from([3, 3, 3, 3]), 1, 1, 2, 1).rgb[(2 * 6 + 2) * 3], 255);
  // The f32 levels v = f32(k/127.5 − 1): PyTorch's f32 ((v + 1)·127.5) truncates 161 of the 256 back
  // to k and 95 to k − 1; the same arithmetic in f64 gave 129 and 127.
  const levels = Float32Array.from({ length: 256 }, (_, k) => k / 127.5 - 1);
  const grid = imageGrid(levels, 1, 1, 16, 1);
  const got = Array.from({ length: 256 }, (_, k) => grid.rgb[((2 + Math.floor(k / 16)) * grid.width + 2 + (k % 16)) * 3]);
  const f = Math.fround;
  t.same(got, Array.from(levels, (v) => Math.floor(f(f(v + 1) * 127.5))), 'f32 arithmetic, as PyTorch');
  t.equal(got.filter((q, k) => q === k).length, 161, 'PyTorch 1.13 keeps 161 levels');
  // Two channels showed as R = channel 0, G = B = channel 1; a fourth was dropped.
  for (const C of [2, 4]) t.throws(() => imageGrid(new Float32Array(C * 4), 1, C, 2, 1), { message: `imageGrid: images of ${C} channels have no RGB picture; it shows 1 (grey) or 3 (RGB)` });
});

// DDPM's step noise comes from a hashed stream: seed·7919 + t + 1, as it was, made z_t of run 0
// the x_T of runs 1…1000, and of seed 731196756 its own x_T (z_999 = x_T: a biased first step).
t.test('DDPM step noise never reuses an x_T: no z_t seed of runs 0–99 is another run\'s x_T seed 0–999, nor its own', async (t) => {
  let reused = 0;
  for (const seed of [...Array(100).keys(), 731196756, 1346313315]) {
    for (let step = 1; step < 1000; step++) {
      const z = hashSeeds(seed, step);
      if (z < 1000 || z === seed) reused++;
    }
  }
  t.equal(reused, 0);
});
