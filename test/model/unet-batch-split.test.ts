// Big batches under a lowered storage-binding limit: the U-Net runs them in chunks sized from its
// plan (forward, and backward when gradients are recorded), the results match the PyTorch dumps
// and the unsplit run, and what cannot fit is a BindingLimitError that says why and what to do.
import t, { type Test } from 'tap';
import { createEngine, type Engine } from '../../src/engine/engine.ts';
import { mul, scale, sub } from '../../src/engine/ops/elementwise.ts';
import { slice } from '../../src/engine/ops/layout.ts';
import { mean } from '../../src/engine/ops/reduce.ts';
import type { Tensor } from '../../src/engine/tensor.ts';
import { openSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { withPrefix } from '../../src/model/checkpoint/tensor-source.ts';
import { compareArrays } from '../../src/model/parity.ts';
import { BindingLimitError, UNet } from '../../src/model/unet.ts';
import { largestBindingPerImage } from '../../src/model/unet-bindings.ts';
import { ADM_256_UNCOND, flagsFromJson, planUNet } from '../../src/model/unet-config.ts';
import { headParity } from '../../src/train/parity.ts';
import { testEngine } from '../helpers/check.ts';

// Both the capped engines and the unsplit one use the direct GEMM for every conv: under these caps
// Winograd's transformed kernels (16 × a kernel) do not fit a binding and conv2d would pick the
// direct GEMM for some convs there and not in the unsplit run, a different rounding. Winograd's
// own split of the tiles under a binding limit is tested in test/ops/conv2d.test.ts. Likewise
// inference attention runs fused: by default lavapipe materialises its weights where they fit a
// binding, which they do unsplit and not under the caps. (With the subgroup GEMM turned off instead,
// as before, the file compiled 48 register-tiled kernels no other lavapipe run uses, about 4 minutes
// of a cold shader cache's 5.)
const tuning = { conv2dWinograd: { enabled: 0 }, attention: { fusedForward: 1 } };
const e = await createEngine({ device: (await testEngine()).device, tuning });
const fixture = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;
const dump = await openSafetensors(fixture('adm32-mini.safetensors'));
t.teardown(() => dump.close());
const flags = flagsFromJson(dump.metadata.config);
const dumpT = Array.from(await dump.read('input.t'));

/** An engine on the same device that plans for at most `cap` bytes per storage binding. */
const capped = (cap: number) => createEngine({ device: e.device, maxBindingBytes: cap, tuning });
const loadUNet = (engine: Engine) => UNet.load(engine, flags, withPrefix(dump, 'param.'));

/** The dump tensor `key` ([2, ...]) with its rows picked in the order `rows` (a batch built from the dump's two images). */
async function dumpRows(key: string, rows: number[]): Promise<Float32Array> {
  const all = await dump.read(key);
  const per = all.length / dump.info(key)!.shape[0];
  const out = new Float32Array(rows.length * per);
  rows.forEach((r, i) => out.set(all.subarray(r * per, (r + 1) * per), i * per));
  return out;
}
const rowsTensor = async (engine: Engine, key: string, rows: number[]) =>
  engine.tensor(await dumpRows(key, rows), [rows.length, ...dump.info(key)!.shape.slice(1)], key);

function sameValues(t: Test, name: string, a: Float32Array, b: Float32Array): void {
  const at = a.findIndex((v, i) => !Object.is(v, b[i]));
  t.ok(a.length === b.length && at < 0, `${name} is identical to the unsplit run${at < 0 ? '' : ` (differs at ${at}: ${a[at]} vs ${b[at]})`}`);
}

// adm32-mini: image 32, 32 channels, channel_mult 1,2, one ResBlock per level, attention only in
// the middle block (64 channels at 16², num_head_channels 32 → 2 heads, T = 256 tokens).
// Blocks: 1 conv 3→32 @32; 2 res 32 @32; 3 down @16; 4 res 32→64 @16; 5 middle @16;
// 6 concat 64+64 @16; 7 concat 64+32 @16 then up → 64 @32; 8 concat 64+32 @32; 9 concat 32+32 @32.
const FORWARD_PER_IMAGE = 4 * 96 * 32 * 32; // block 8's skip concat [96, 32, 32] = 393216 bytes
const TO_BLOCK_7_PER_IMAGE = 4 * 64 * 32 * 32; // block 7's upsampled input [64, 32, 32] = 262144
const GRADIENT_PER_IMAGE = 4 * 2 * 256 * 256; // the middle attention's weights [2, 256, 256] = 524288

t.test('the largest binding one image needs comes from the plan (sizes worked by hand)', async (t) => {
  const mini = planUNet(flags);
  const all = { last: 9, output: true, gradients: false };
  t.same(largestBindingPerImage(e, mini, all), { bytesPerImage: FORWARD_PER_IMAGE, what: 'block 8 (output_blocks.2): the skip concat [96, 32, 32]' });
  t.equal(largestBindingPerImage(e, mini, { last: 7, output: false, gradients: false }).bytesPerImage, TO_BLOCK_7_PER_IMAGE, 'only the blocks that run count');
  t.same(largestBindingPerImage(e, mini, { ...all, gradients: true }), { bytesPerImage: GRADIENT_PER_IMAGE, what: 'block 5 (middle_block.1): the attention weights [2, 256, 256]' });
  // Where the subgroup GEMM runs (lavapipe), inference attention materialises its weights too.
  const base = await testEngine();
  if (base.subgroupMatmul) {
    t.same(largestBindingPerImage(base, mini, all), { bytesPerImage: GRADIENT_PER_IMAGE, what: 'block 5 (middle_block.1): the attention weights [2, 256, 256]' }, 'inference with the subgroup GEMM');
  }
  // ADM-256: the first decoder block at 256² joins 256 channels with block 3's 256 (the skip concat
  // that exceeded the binding on a GPU at batch 32); up to block 24 the widest map is block 1's
  // [256, 256, 256]. With gradients, attention at 32² (512 channels, 8 heads, 1024 tokens) needs
  // 8·1024² floats = 32 MiB, less than the concat's 128 MiB.
  const adm = planUNet(ADM_256_UNCOND);
  t.same(largestBindingPerImage(e, adm, { last: 37, output: true, gradients: true }), { bytesPerImage: 4 * 512 * 256 * 256, what: 'block 35 (output_blocks.15): the skip concat [512, 256, 256]' });
  t.equal(largestBindingPerImage(e, adm, { last: 24, output: false, gradients: false }).bytesPerImage, 4 * 256 * 256 * 256);
});

t.test('a batch of 5 under a lowered binding limit runs in chunks and matches the dump and the unsplit run', async (t) => {
  const rows = [0, 1, 1, 0, 1];
  const ts = rows.map((r) => dumpT[r]);
  const taps = [1, 2, 3, 4, 5, 6, 7, 8, 9];
  const reference = await loadUNet(e);
  const xt0 = await rowsTensor(e, 'input.x_t', rows);
  const unsplit = reference.forward(xt0, ts, { taps, output: true, emb: true });
  // 400000: one image per chunk (two would need 786432 bytes for block 8's concat, and as much
  // for block 9's and for block 7's output); 800000: chunks of 2, 2, 1, bounded by block 8's concat.
  for (const cap of [FORWARD_PER_IMAGE + 6784, 2 * FORWARD_PER_IMAGE + 13568]) {
    const small = await capped(cap);
    const unet = await loadUNet(small);
    const r = unet.forward(await rowsTensor(small, 'input.x_t', rows), ts, { taps, output: true, emb: true });
    t.ok(r.taps.get(7)!.byteLength > cap, `block 7's output for 5 images (${r.taps.get(7)!.byteLength} bytes) is over the cap ${cap}: joined without a binding`);
    for (const [name, got, ref] of [
      ...taps.map((b) => [`block.${b}`, r.taps.get(b)!, unsplit.taps.get(b)!] as const),
      ['output', r.output!, unsplit.output!] as const,
      ['emb', r.emb!, unsplit.emb!] as const,
    ]) {
      const values = await got.read();
      const c = compareArrays(`${name} (cap ${cap})`, values, await dumpRows(name, rows), 1e-5);
      t.ok(c.pass, `${c.name}: ${c.maxRel.toExponential(2)} against the dump`);
      sameValues(t, c.name, values, await ref.read());
    }
    await small.dispose();
  }
  for (const p of reference.parameters().values()) p.dispose();
});

/** Runs adm32-mini's backward dump (L = Σ R ⊙ block 7) on a batch of the dump's rows; returns every gradient. */
async function gradients(engine: Engine, rows: number[]): Promise<Map<string, Float32Array>> {
  const unet = await loadUNet(engine);
  const xt = await rowsTensor(engine, 'input.x_t', rows);
  xt.requiresGrad = true;
  const probes = new Map<number, Tensor>();
  for (const blk of unet.plan.blocks.slice(0, 7)) {
    const z = engine.zeros([rows.length, blk.outChannels, blk.size, blk.size], `probe.block.${blk.b}`);
    z.requiresGrad = true;
    probes.set(blk.b, z);
  }
  const paramKeys = dump.keys().filter((k) => k.startsWith('grad.param.')).map((k) => k.slice(11));
  for (const k of paramKeys) unet.param(k).requiresGrad = true;
  const r = unet.forward(xt, rows.map((i) => dumpT[i]), { taps: [7], addToBlock: probes });
  engine.tape.backward(r.taps.get(7)!, await rowsTensor(engine, 'grad.R', rows));
  const out = new Map<string, Float32Array>([['grad.x_t', await xt.grad!.read()]]);
  for (const [b, z] of probes) out.set(`grad.block.${b}`, await z.grad!.read());
  for (const k of paramKeys) out.set(`grad.param.${k}`, await unet.param(k).grad!.read());
  return out;
}

t.test('with gradients recorded the batch is split for the backward too: input and weight gradients match the dump', async (t) => {
  // 800000 bytes hold two images' forward (786432) but not two images' attention weights
  // (1048576), which the backward needs: chunks of one image.
  const cap = 2 * FORWARD_PER_IMAGE + 13568;
  for (const rows of [[0, 1], [0, 1, 0]]) {
    const small = await capped(cap);
    const split = await gradients(small, rows);
    const whole = await gradients(e, rows);
    for (const [name, values] of split) {
      if (name.startsWith('grad.param.')) {
        // Weight gradients sum over the batch: only the dump's own batch has a reference.
        if (rows.length !== 2) continue;
        const c = compareArrays(name, values, await dump.read(name), 1e-4);
        t.ok(c.pass, `${c.name} (batch ${rows}): ${c.maxRel.toExponential(2)} against the dump`);
        continue;
      }
      const c = compareArrays(name, values, await dumpRows(name, rows), 1e-4);
      t.ok(c.pass, `${c.name} (batch ${rows}): ${c.maxRel.toExponential(2)} against the dump`);
      sameValues(t, `${name} (batch ${rows})`, values, whole.get(name)!);
    }
    await small.dispose();
  }
});

t.test('a pretraining step (every weight trained, ε loss on the output) gives the unsplit gradients when split', async (t) => {
  const step = async (engine: Engine) => {
    const unet = await loadUNet(engine);
    for (const p of unet.parameters().values()) p.requiresGrad = true;
    const xt = await rowsTensor(engine, 'input.x_t', [0, 1]);
    const noise = await rowsTensor(engine, 'input.noise', [0, 1]);
    const out = unet.forward(xt, dumpT, { output: true }).output!;
    const d = sub(slice(out, [0, 0], [2, 3]), noise);
    const loss = mean(mul(d, d));
    engine.tape.backward(loss);
    const grads = new Map<string, Float32Array>();
    for (const [k, p] of unet.parameters()) grads.set(k, await p.grad!.read());
    return { loss: (await loss.read())[0], grads };
  };
  const small = await capped(GRADIENT_PER_IMAGE + 4096); // one image per chunk
  const split = await step(small);
  const whole = await step(e);
  t.equal(split.loss, whole.loss, 'the same loss');
  let worst = { name: '', rel: 0 };
  for (const [k, g] of split.grads) {
    const c = compareArrays(k, g, whole.grads.get(k)!, 1e-5);
    if (c.maxRel >= worst.rel) worst = { name: k, rel: c.maxRel };
  }
  t.ok(worst.rel <= 1e-5, `every weight gradient within 1e-5 of the unsplit one (worst ${worst.name}: ${worst.rel.toExponential(2)})`);
  await small.dispose();
});

t.test('DifFeed under a lowered limit: its first U-Net pass is split and it still matches its dump', async (t) => {
  const difeed = await openSafetensors(fixture('difeed.safetensors'));
  // adm64, batch 4. The feedback from block 36 into block 2, [4, 32, 64, 64] = 2097152 bytes, is
  // the largest whole-batch tensor; the first pass (to block 36) needs 1048576 bytes per image
  // (the concat [64, 64, 64] at 64²), so 2200000 bytes run it two images at a time.
  const small = await capped(2_200_000);
  const report = await headParity(small, difeed);
  for (const c of report.results) {
    const tol = c.name.startsWith('grad.') || c.name.startsWith('adam1.') ? 1e-3 : 1e-5;
    t.ok(c.maxRel <= tol, `${c.name}: ${c.maxRel.toExponential(2)}`);
  }
  await small.dispose();
  const tooSmall = await capped(1_100_000);
  await t.rejects(headParity(tooSmall, difeed), new RegExp(
    'DifFeed: the feedback from block 36 into block 2 \\[4, 32, 64, 64\\] is 2097152 bytes, over the largest storage binding, 1100000 bytes ' +
      '\\(the engine\'s maxBindingBytes; this device\'s maxStorageBufferBindingSize is \\d+\\)\\. Only the U-Net passes split a batch; ' +
      'the feedback layers and the head take it whole: use batches of at most 2 images',
  ));
  await tooSmall.dispose();
  await difeed.close();
});

t.test('what no split can fit is a BindingLimitError naming the tensor, its size and the limit', async (t) => {
  const limit = (cap: number) => `${cap} bytes \\(the engine's maxBindingBytes; this device's maxStorageBufferBindingSize is \\d+\\)`;
  const run = async (cap: number, fn: (unet: UNet, small: Engine) => Promise<void>) => {
    const small = await capped(cap);
    try {
      await fn(await loadUNet(small), small);
    } finally {
      small.tape.clear();
      await small.dispose();
    }
  };

  await t.test('one image over the limit', (t) => run(350_000, async (unet, small) => {
    const xt = await rowsTensor(small, 'input.x_t', [0]);
    t.throws(() => unet.forward(xt, [dumpT[0]], { output: true }), {
      name: 'BindingLimitError',
      message: new RegExp(`^U-Net: one image needs a 393216-byte storage binding for block 8 \\(output_blocks\\.2\\): the skip concat \\[96, 32, 32\\], over the largest this engine may use, ${limit(350_000)}; splitting the batch cannot go below one image`),
    });
    t.ok(new BindingLimitError('') instanceof RangeError);
    // The cap is what the engine enforces on every binding, so passing under it proves the split.
    // It names the tensor and its shape, and a refused dispatch leaves no command counted in flight.
    const inFlight = small.memoryStats().commandsInFlight;
    t.throws(() => scale(small.empty([350_000 / 4 + 64], 'huge'), 2), /huge \[87564\] needs a 350256 byte binding, over the largest storage binding \(350000\)/);
    t.equal(small.memoryStats().commandsInFlight, inFlight);
    // Blocks 1..7 need at most 262144 bytes per image: asking only for block 7 runs, one image at a time.
    const both = await rowsTensor(small, 'input.x_t', [0, 1]);
    const c = compareArrays('block.7', await unet.forward(both, dumpT, { taps: [7] }).taps.get(7)!.read(), await dump.read('block.7'), 1e-5);
    t.ok(c.pass, `block 7 alone still runs: ${c.maxRel.toExponential(2)}`);
  }));

  // One image's attention weights with gradients (524288 bytes) pass 450000: CPU adapters, which
  // train through the weights, take the fused backward there (the model was refused: it could not train).
  await t.test('attention weights over the limit with gradients recorded train through the fused backward', (t) => run(450_000, async (unet, small) => {
    const grads = async (engine: Engine, net: UNet) => {
      const xt = await rowsTensor(engine, 'input.x_t', [0, 1]);
      xt.requiresGrad = true;
      const out = net.forward(xt, dumpT, { output: true }).output!;
      engine.tape.backward(mean(mul(out, out)));
      return { out: await out.read(), dx: await xt.grad!.read() };
    };
    const split = await grads(small, unet);
    const c = compareArrays('output', split.out, await dump.read('output'), 1e-5);
    t.ok(c.pass, `the output with gradients recorded, one image per chunk: ${c.maxRel.toExponential(2)}`);
    const whole = await grads(e, await loadUNet(e));
    const g = compareArrays('x_t gradient', split.dx, whole.dx, 1e-4);
    t.ok(g.pass, `the input gradient through the fused backward, against the unsplit composite one: ${g.maxRel.toExponential(2)}`);
  }));

  await t.test('a weight over the limit', (t) => run(200_000, async (unet, small) => {
    const xt = await rowsTensor(small, 'input.x_t', [0]);
    // Block 1 binds none of the deeper weights: it runs (it was refused for output_blocks.0's weight).
    const c = compareArrays('block.1', await unet.forward(xt, [dumpT[0]], { taps: [1] }).taps.get(1)!.read(), (await dump.read('block.1')).subarray(0, 32 * 32 * 32), 1e-5);
    t.ok(c.pass, `block 1 alone runs: ${c.maxRel.toExponential(2)}`);
    t.throws(() => unet.forward(xt, [dumpT[0]], { taps: [6] }), {
      name: 'BindingLimitError',
      message: new RegExp(`^U-Net parameter output_blocks\\.0\\.0\\.in_layers\\.2\\.weight \\[64, 128, 3, 3\\] needs a 294912-byte storage binding, over the largest this engine may use, ${limit(200_000)}; this model cannot run on it at any batch size`),
    });
  }));

  // 1100000 bytes: chunks of 2 images with gradients (2 × 524288); block 7's map for 5 images is
  // 5 × 262144 = 1310720 bytes, and a tensor in the backward is sliced or joined whole.
  const rows = [0, 1, 0, 1, 0];
  await t.test('a whole-batch feedback that needs a gradient over the limit', (t) => run(1_100_000, async (unet, small) => {
    const xt = await rowsTensor(small, 'input.x_t', rows);
    const probe = small.zeros([5, 64, 32, 32], 'probe');
    probe.requiresGrad = true;
    t.throws(() => unet.forward(xt, rows.map((r) => dumpT[r]), { taps: [7], addToBlock: new Map([[7, probe]]) }), {
      name: 'BindingLimitError',
      message: new RegExp(`^U-Net forward with gradients recorded: the feedback added to block 7 for 5 images is 1310720 bytes, over the largest storage binding, ${limit(1_100_000)}\\. The batch runs in chunks of 2 images, but a tensor that takes part in the backward is sliced and joined whole: use at most 4 images per call`),
    });
  }));

  await t.test('a joined result that needs a gradient over the limit (nothing left behind)', (t) => run(1_100_000, async (unet, small) => {
    const xt = await rowsTensor(small, 'input.x_t', rows);
    xt.requiresGrad = true;
    const live = small.memoryStats().liveBytes;
    t.throws(() => unet.forward(xt, rows.map((r) => dumpT[r]), { taps: [7] }), {
      name: 'BindingLimitError',
      message: /^U-Net forward with gradients recorded: block 7's output for 5 images is 1310720 bytes, over the largest storage binding/,
    });
    small.tape.clear();
    t.equal(small.memoryStats().liveBytes, live, 'the first chunk\'s results were released');
  }));
});
