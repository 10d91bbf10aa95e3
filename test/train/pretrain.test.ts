import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { gaussianNoise, linearSchedule } from '../../src/model/diffusion.ts';
import { sample } from '../../src/model/sampling.ts';
import { UNet } from '../../src/model/unet.ts';
import { imagesPerChunk, largestBindingPerImage } from '../../src/model/unet-bindings.ts';
import { createEngine } from '../../src/engine/engine.ts';
import { balancedSubset, loadFashionMnist, toModelInput } from '../../src/train/data/fashion-mnist.ts';
import { Ema, pretrain, stepGenerator } from '../../src/train/pretrain.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();
const tiny = {
  image_size: 16, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '2',
  num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
};
const ds = await loadFashionMnist('train');
const idx = balancedSubset(ds.labels, 6, 1);
const data = { count: idx.length, labels: idx.map((i) => ds.labels[i]), images: (sel: readonly number[]) => toModelInput(ds, sel.map((i) => idx[i]), 16) };

t.test('the EMA update is decay·shadow + (1 − decay)·param for every element of every parameter (4 per invocation and 1)', async (t) => {
  const values = (n: number, seed: number) => Float32Array.from(gaussianNoise(n, seed));
  const params = new Map([['a', e.tensor(values(1000, 1), [10, 100])], ['b', e.tensor(values(3, 2), [3])]]);
  const ema = new Ema(e, params, 0.9);
  const expected = new Map([...params].map(([k, p]) => [k, Float64Array.from(values(p.size, k === 'a' ? 1 : 2))]));
  for (let step = 0; step < 3; step++) {
    for (const [k, p] of params) {
      const next = values(p.size, 10 * step + (k === 'a' ? 3 : 4));
      e.writeBuffer(p.buffer, 0, next);
      expected.get(k)!.forEach((s, i, arr) => void (arr[i] = 0.9 * s + 0.1 * next[i]));
    }
    ema.update();
  }
  for (const [k, want] of expected) {
    const got = await ema.shadow.get(k)!.read();
    const worst = want.reduce((m, w, i) => Math.max(m, Math.abs(got[i] - w) / (1e-6 + Math.abs(w))), 0);
    t.ok(worst < 1e-5, `${k}: worst relative error ${worst.toExponential(2)}`);
  }
  for (const p of [...params.values(), ...ema.shadow.values()]) p.dispose();
});

t.test('the diffusion loss (Eq. 4) goes down on Fashion-MNIST images', async (t) => {
  const unet = UNet.random(e, tiny, 1);
  const r = await pretrain(e, unet, data, { steps: 40, batchSize: 8, lr: 1e-3, logEvery: 1 });
  const first = r.losses.slice(0, 5).reduce((a, [, l]) => a + l, 0) / 5;
  const last = r.losses.slice(-5).reduce((a, [, l]) => a + l, 0) / 5;
  t.ok(last < 0.7 * first, `mean loss of the first 5 steps ${first.toFixed(3)}, of the last 5 ${last.toFixed(3)}`);
});

t.test('a learn_sigma model trains its variance channels too (L_vb), and its state records that loss', async (t) => {
  const unet = UNet.initial(e, { ...tiny, learn_sigma: true }, 4);
  const before = await unet.param('out.2.weight').read();
  const dir = await mkdtemp(join(tmpdir(), 'difrep-pretrain-vb-'));
  await pretrain(e, unet, data, { steps: 2, batchSize: 4, lr: 1e-3, checkpoint: join(dir, 's.safetensors'), checkpointEverySeconds: 0 });
  const after = await unet.param('out.2.weight').read();
  // out.2.weight is [6, 32, 3, 3]: rows 0–2 predict ε, rows 3–5 the variance v.
  const moved = (rows: number[]) => rows.every((r) => after.subarray(r * 288, (r + 1) * 288).some((w, i) => w !== before[r * 288 + i]));
  t.ok(moved([0, 1, 2]), 'the ε rows moved');
  t.ok(moved([3, 4, 5]), 'the variance rows moved (under the MSE alone their gradient is 0)');
  // Its settings name the loss, so a state trained under the MSE alone (no such entry) is not resumed into it.
  const { readRunSettings } = await import('../../src/train/checkpoint.ts');
  const { openSafetensors } = await import('../../src/model/checkpoint/safetensors.ts');
  const src = await openSafetensors(join(dir, 's.safetensors'));
  t.equal(readRunSettings(join(dir, 's.safetensors'), src.metadata).loss, 'mse+vb');
  await src.close();
  for (const p of unet.parameters().values()) p.dispose();
  await rm(dir, { recursive: true });
});

t.test('pretraining with dropout draws a mask per step: the same seed gives the same run, and the run differs from one without dropout', async (t) => {
  const run = async (dropout: number) => {
    const unet = UNet.random(e, { ...tiny, dropout }, 6);
    const r = await pretrain(e, unet, data, { steps: 2, batchSize: 4, lr: 1e-3, logEvery: 1 });
    const w = await unet.param('input_blocks.1.0.in_layers.2.weight').read();
    for (const p of unet.parameters().values()) p.dispose();
    return { losses: r.losses.map(([, l]) => l), w: Array.from(w) };
  };
  const [a, b, none] = [await run(0.3), await run(0.3), await run(0)];
  t.same(a, b, 'reproducible');
  t.not(a.losses[0], none.losses[0], 'the first loss already differs from eval mode');
  t.not(a.w.join(), none.w.join());
});

t.test('a batch more than one chunk of the U-Net holds trains in parts, gradients added up: the same step as the whole batch', async (t) => {
  // 32×32 images, learn_sigma (the L_vb term's weights too) and dropout (each image's mask from its
  // index in the whole batch); the parts engine holds two images a chunk, so the batch of 5 trains as
  // 2 + 2 + 1, and allows 2,000 commands in flight: one part records ~1,100, the whole batch in
  // chunks ~3,000 (refused, the defect this replaced).
  const config = { image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,1', attention_resolutions: '2', num_head_channels: 32, learn_sigma: true, use_scale_shift_norm: true, resblock_updown: true, dropout: 0.1 };
  const images = { count: 10, labels: new Array(10).fill(0), images: (sel: readonly number[]) => Float32Array.from({ length: sel.length * 3 * 32 * 32 }, (_, i) => Math.sin(0.37 * i + sel[Math.floor(i / 3072)])) };
  const perImage = largestBindingPerImage(e, UNet.random(e, config, 1).plan, { last: 10, output: true, gradients: true }).bytesPerImage;
  const small = await createEngine({ maxBindingBytes: 2 * perImage, maxCommandsInFlight: 2000 });
  t.teardown(() => small.dispose());
  const run = async (engine: typeof e) => {
    const unet = UNet.random(engine, config, 7);
    t.equal(imagesPerChunk(engine, unet.plan, { last: unet.numBlocks, output: true, gradients: true }), engine === e ? 512 : 2);
    const r = await pretrain(engine, unet, images, { steps: 2, batchSize: 5, lr: 1e-3, logEvery: 1 });
    const weights = new Map<string, Float32Array>();
    for (const [k, p] of unet.parameters()) weights.set(k, await p.read());
    for (const p of [...unet.parameters().values(), ...r.ema.shadow.values()]) p.dispose();
    return { losses: r.losses.map(([, l]) => l), weights };
  };
  const whole = await run(e);
  const parts = await run(small);
  for (const [i, l] of whole.losses.entries()) t.ok(Math.abs(parts.losses[i] - l) <= 1e-5 * l, `step ${i + 1}'s loss: ${parts.losses[i]} in parts, ${l} whole`);
  // Weights whose gradient is 0 in exact arithmetic (a conv bias that a GroupNorm of one channel a
  // group removes) get Adam steps of ±lr from rounding noise, apart in the two runs; every other
  // weight takes the same steps.
  let apart = 0;
  let total = 0;
  for (const [k, w] of whole.weights) {
    total += w.length;
    parts.weights.get(k)!.forEach((v, i) => void (apart += Math.abs(v - w[i]) > 1e-6 ? 1 : 0));
  }
  t.ok(apart < 0.005 * total, `${apart} of ${total} weights more than 1e-6 apart after 2 steps (lr 1e-3)`);
});

t.test('pretraining stopped and resumed gives bit-identical weights and EMA', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-pretrain-'));
  const a = UNet.random(e, tiny, 2);
  const ra = await pretrain(e, a, data, { steps: 4, batchSize: 4, lr: 1e-3, emaDecay: 0.9 });
  const b = UNet.random(e, tiny, 2);
  await pretrain(e, b, data, { steps: 2, batchSize: 4, lr: 1e-3, emaDecay: 0.9, checkpoint: join(dir, 's.safetensors'), checkpointEverySeconds: 0 });
  const c = UNet.random(e, tiny, 3); // other initial weights: everything must come from the checkpoint
  const rc = await pretrain(e, c, data, { steps: 4, batchSize: 4, lr: 1e-3, emaDecay: 0.9, checkpoint: join(dir, 's.safetensors'), resume: true });
  let differ = 0;
  for (const [k, p] of a.parameters()) {
    const x = await p.read();
    const y = await c.parameters().get(k)!.read();
    const ex = await ra.ema.shadow.get(k)!.read();
    const ey = await rc.ema.shadow.get(k)!.read();
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i] || ex[i] !== ey[i]) differ++;
  }
  t.equal(differ, 0);
  await rm(dir, { recursive: true });
});

t.test('DDIM with a model that predicts ε = 0 follows the clipped update, worked in float64', async (t) => {
  const unet = UNet.random(e, tiny, 4);
  const zeroed = new Map(unet.parameters());
  for (const k of ['out.2.weight', 'out.2.bias']) zeroed.set(k, e.zeros(unet.param(k).shape));
  const x = await (await sample(e, unet.withWeights(zeroed), { count: 2, seed: 9, ddimSteps: 4 })).read();
  // Four steps: 1000/4 = 250 apart ("ddim4": 750, 500, 250, 0). x̂0 = clamp(x/sqrt(ᾱ_t), ±1),
  // ε′ = (x − sqrt(ᾱ_t)·x̂0)/sqrt(1−ᾱ_t), x ← sqrt(ᾱ_prev)·x̂0 + sqrt(1−ᾱ_prev)·ε′ (ᾱ_prev = 1 at the end).
  const ac = linearSchedule(1000).alphasCumprod;
  const ts = [750, 500, 250, 0];
  const ref = Float64Array.from(gaussianNoise(2 * 3 * 16 * 16, 9));
  ts.forEach((step, k) => {
    const abar = ac[step];
    const prev = k + 1 < ts.length ? ac[ts[k + 1]] : 1;
    for (let i = 0; i < ref.length; i++) {
      const x0 = Math.min(1, Math.max(-1, ref[i] / Math.sqrt(abar)));
      const eps = (ref[i] - Math.sqrt(abar) * x0) / Math.sqrt(1 - abar);
      ref[i] = Math.sqrt(prev) * x0 + Math.sqrt(1 - prev) * eps;
    }
  });
  let worst = 0;
  ref.forEach((v, i) => (worst = Math.max(worst, Math.abs(x[i] - v))));
  t.ok(worst < 1e-5, `max |x − ref| ${worst}`);
  t.ok(x.every((v) => v >= -1 && v <= 1), 'in [−1, 1]');
});

t.test('pretraining draws each image once per epoch (a seeded shuffle, the last partial batch dropped), as guided-diffusion\'s DataLoader', async (t) => {
  // 9 images in batches of 4: two batches an epoch, one image left out of each. Drawn independently
  // (as before), a batch could repeat an image and some images went unseen for epochs.
  const seen: number[][] = [];
  const nine = { count: 9, labels: data.labels.slice(0, 9), images: (sel: readonly number[]) => (seen.push([...sel]), data.images(sel)) };
  await pretrain(e, UNet.random(e, tiny, 5), nine, { steps: 4, batchSize: 4, lr: 1e-3, emaDecay: 0.9 });
  for (const epoch of [0, 1]) t.equal(new Set(seen.slice(2 * epoch, 2 * epoch + 2).flat()).size, 8, `epoch ${epoch + 1}: 8 distinct images in its two batches`);
  t.notSame(seen.slice(0, 2), seen.slice(2, 4), 'another shuffle each epoch');
  await t.rejects(pretrain(e, UNet.random(e, tiny, 5), nine, { steps: 1, batchSize: 10 }), /9 images make no full batch of 10/);
});

// Each step seeded mulberry32 with seed·1,000,003 + step: consecutive seeds, whose k-th draws repeat
// far more often than chance (with batch 32, step 3231 and step 10091 drew the same noise seed).
// Independent 31-bit draws over 20,000 steps repeat 20,000² / 2³² ≈ 0.09 times on average.
t.test('pretraining steps draw independent noise seeds; a state saved on the old stream resumes on it', async (t) => {
  const repeats = (hashed: boolean) => {
    const seen = new Set<number>();
    let n = 0;
    for (let step = 0; step < 20000; step++) {
      const rand = stepGenerator(0, step, hashed);
      for (let k = 0; k < 32; k++) rand(1000); // the batch's 32 timesteps, then its noise seed
      const noise = rand(2 ** 31);
      if (seen.has(noise)) n++;
      seen.add(noise);
    }
    return n;
  };
  t.ok(repeats(true) <= 2, `${repeats(true)} repeated noise seeds in 20,000 steps`);
  t.ok(repeats(false) > 1000, `the old stream: ${repeats(false)} repeats (the defect this replaced)`);
  const dir = await mkdtemp(join(tmpdir(), 'difrep-pretrain-stream-'));
  const options = (checkpoint: string, steps: number, resume = false) => ({ steps, batchSize: 4, lr: 1e-3, emaDecay: 0.9, checkpoint, checkpointEverySeconds: 0, resume });
  const [legacy, current] = [join(dir, 'legacy.safetensors'), join(dir, 'current.safetensors')];
  await pretrain(e, UNet.random(e, tiny, 2), data, options(current, 1));
  t.match(JSON.parse((await metadataOf(current)).settings), { stepSeeds: 'hashed' }, 'a new run records its stream');
  // The same state as an earlier difrep saved it: its settings without stepSeeds.
  const { openSafetensors, writeSafetensors } = await import('../../src/model/checkpoint/safetensors.ts');
  const src = await openSafetensors(current);
  const tensors = Object.fromEntries(await Promise.all(src.keys().map(async (k) => [k, { shape: src.info(k)!.shape, data: await src.read(k) }])));
  const { stepSeeds: _, ...old } = JSON.parse(src.metadata.settings);
  await writeSafetensors(legacy, tensors, { ...src.metadata, settings: JSON.stringify(old) });
  await src.close();
  const a = UNet.random(e, tiny, 2);
  const b = UNet.random(e, tiny, 2);
  await pretrain(e, a, data, options(legacy, 2, true));
  await pretrain(e, b, data, options(current, 2, true));
  t.notOk('stepSeeds' in JSON.parse((await metadataOf(legacy)).settings), 'the resumed old state stays on its stream');
  const [wa, wb] = [await a.parameters().get('out.2.weight')!.read(), await b.parameters().get('out.2.weight')!.read()];
  t.not(Array.from(wa).join(), Array.from(wb).join(), 'step 2 drew from the two streams apart');
  await rm(dir, { recursive: true });
});

async function metadataOf(path: string): Promise<Record<string, string>> {
  const { openSafetensors } = await import('../../src/model/checkpoint/safetensors.ts');
  const src = await openSafetensors(path);
  const metadata = src.metadata;
  await src.close();
  return metadata;
}

t.test('flips: a fair coin per image, mirroring each channel\'s rows; a state without them resumes only without them', async (t) => {
  const { coinFlips, mirrorImages } = await import('../../src/train/flips.ts');
  const coins = coinFlips(3, Array.from({ length: 2000 }, (_, i) => i)).filter(Boolean).length;
  t.ok(coins > 910 && coins < 1090, `${coins} of 2000 (sd 22)`);
  // Two 2 × 2 images of 2 channels; only the second mirrored.
  t.same(Array.from(mirrorImages(Float32Array.from({ length: 16 }, (_, i) => i), 2, 2, 2, [false, true])), [0, 1, 2, 3, 4, 5, 6, 7, 9, 8, 11, 10, 13, 12, 15, 14]);
  const dir = await mkdtemp(join(tmpdir(), 'difrep-pretrain-flip-'));
  const state = join(dir, 's.safetensors');
  await pretrain(e, UNet.random(e, tiny, 2), data, { steps: 1, batchSize: 4, flip: false, batches: 'replacement', checkpoint: state });
  const refusedUnet = UNet.random(e, tiny, 2);
  const live = e.memoryStats().liveBytes;
  await t.rejects(pretrain(e, refusedUnet, data, { steps: 2, batchSize: 4, checkpoint: state, resume: true }), /cannot resume .*augment unset there, "flip" now; batches unset there, "epochs" now/);
  t.equal(e.memoryStats().liveBytes, live, 'the refused run freed its Adam moments and EMA weights');
  t.equal((await pretrain(e, UNet.random(e, tiny, 2), data, { steps: 2, batchSize: 4, flip: false, batches: 'replacement', checkpoint: state, resume: true })).steps, 2);
  await rm(dir, { recursive: true });
});

// The loss is read back every logEvery steps: a NaN read then may have arisen at any step since
// the last read, so the error names that range; a NaN in the images is caught before the step.
t.test('a NaN loss names the steps since the last read; NaN images name their step', async (t) => {
  const unet = UNet.random(e, tiny, 1);
  const [name, weight] = [...unet.parameters()][3];
  const poisoned = await weight.read();
  poisoned[0] = NaN;
  e.writeBuffer(weight.buffer, 0, poisoned);
  await t.rejects(pretrain(e, unet, data, { steps: 3, batchSize: 4, lr: 1e-3, logEvery: 10 }),
    { name: 'NonFiniteError', message: /^the training loss is NaN at one of steps 1–3 \(the loss is read every 10 steps\)/ }, `a NaN in ${name}`);
  const clean = UNet.random(e, tiny, 1);
  let calls = 0;
  const withNaN = { ...data, images: async (sel: readonly number[]) => {
    const images = await data.images(sel);
    if (++calls === 3) images[5] = NaN;
    return images;
  } };
  await t.rejects(pretrain(e, clean, withNaN, { steps: 5, batchSize: 4, lr: 1e-3, logEvery: 10 }),
    { name: 'NonFiniteError', message: /^the batch of step 3 \(dataset indices [\d, …]+\) holds NaN at index 5$/ });
});

// The first state is saved minutes in (--checkpoint-every, 300 s): a checkpoint path that cannot be
// written is refused before the first step, not after the training it was to keep.
t.test('a checkpoint in a folder that does not exist is refused before any step', async (t) => {
  const unet = UNet.random(e, tiny, 1);
  let steps = 0;
  await t.rejects(pretrain(e, unet, data, { steps: 2, batchSize: 4, checkpoint: join(tmpdir(), 'difrep-no-such-folder', 'state.safetensors'), onStep: () => void steps++ }),
    /^cannot save the training state .*difrep-no-such-folder.state\.safetensors: the folder .*difrep-no-such-folder does not exist; create it first; nothing was trained$/);
  t.equal(steps, 0, 'no step taken');
});

// The CLI bounds these; the library took an EMA decay of 1.5 (a diverging average) without a word.
t.test('pretrain refuses options out of range, naming them', async (t) => {
  const unet = UNet.random(e, tiny, 2);
  for (const [o, message] of [
    [{ steps: 1, emaDecay: 1.5 }, /pretrain: emaDecay 1\.5 is not in \[0, 1\]/],
    [{ steps: 1, lr: 0 }, /pretrain: lr 0 is not a number > 0/],
    [{ steps: 1.5 }, /pretrain: steps 1\.5 is not a whole number ≥ 0/],
    [{ steps: 1, batchSize: 0 }, /pretrain: batchSize 0 is not a whole number ≥ 1/],
    [{ steps: 1, seed: -1 }, /pretrain: seed -1 is not a whole number ≥ 0/],
  ] as const) await t.rejects(pretrain(e, unet, data, o), message);
  for (const p of unet.parameters().values()) p.dispose();
});

// Adam set requiresGrad on every U-Net parameter and pretrain left it set: each later forward was
// recorded on the tape, keeping its activations (481 KB a call at batch 2 on this U-Net) until a
// backward that inference never calls.
t.test('after pretraining the U-Net\'s parameters require gradients as before, and a forward records nothing', async (t) => {
  const unet = UNet.random(e, tiny, 2);
  const before = [...unet.parameters().values()].map((p) => p.requiresGrad);
  const r = await pretrain(e, unet, data, { steps: 2, batchSize: 4, lr: 1e-3 });
  t.same([...unet.parameters().values()].map((p) => p.requiresGrad), before, 'every flag as before');
  const xt = e.tensor(new Float32Array(2 * 3 * 16 * 16).fill(0.5), [2, 3, 16, 16], 'xt');
  const tap = unet.forward(xt, [150, 150], { taps: [4] }).taps.get(4)!;
  t.equal(e.tape.length, 0, 'the forward left nothing on the tape');
  for (const x of [xt, tap, ...r.ema.shadow.values()]) x.dispose();
});
