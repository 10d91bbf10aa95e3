// UNet.initial, the weights `pretrain` starts from without a checkpoint: guided-diffusion's
// initialisation (PyTorch's default layer init, GroupNorm 1/0, zero_module on the layers
// guided_diffusion/unet.py wraps in it). Expectations come from those definitions: the bounds
// 1/√fan_in, and the identities the zeros make (each ResBlock and attention block passes its input
// through unchanged; the model predicts ε = 0).
import t from 'tap';
import { UNet } from '../../src/model/unet.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();
// Two levels, attention at the lower one, up/down by ResBlocks: every kind of layer.
const flags = {
  image_size: 8, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '4',
  num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
};

/** guided_diffusion/unet.py's zero_module calls: ResBlock.out_layers[3], AttentionBlock.proj_out, UNetModel.out[2]. */
const ZEROED = (k: string) => /\.out_layers\.3\.|\.proj_out\.|^out\.2\./.test(k);
/** Its GroupNorm32s: ResBlock.in_layers[0] and out_layers[0], AttentionBlock.norm, UNetModel.out[0]. */
const GROUP_NORM = (k: string) => /\.(in_layers\.0|out_layers\.0|norm)\.|^out\.0\./.test(k);

t.test('zero_module layers are zero, GroupNorms 1 and 0, every other weight and bias uniform in ±1/√fan_in', async (t) => {
  const unet = UNet.initial(e, flags, 7);
  const params = unet.parameters();
  let zeroed = 0;
  let uniform = 0;
  for (const [k, p] of params) {
    const v = await p.read();
    if (ZEROED(k)) {
      zeroed++;
      t.ok(v.every((x) => x === 0), `${k} is zero`);
    } else if (GROUP_NORM(k)) {
      t.ok(v.every((x) => x === (k.endsWith('.weight') ? 1 : 0)), `${k} is ${k.endsWith('.weight') ? 1 : 0}`);
    } else {
      uniform++;
      const weight = params.get(k.replace(/bias$/, 'weight'))!;
      const fanIn = weight.shape.slice(1).reduce((a, b) => a * b, 1);
      const bound = 1 / Math.sqrt(fanIn);
      t.ok(v.every((x) => Math.abs(x) <= bound), `${k} within ±1/√${fanIn}`);
      if (v.length >= 2000) {
        // U(−b, b) has variance b²/3; a few thousand draws put the sample's within a few percent.
        const variance = v.reduce((s, x) => s + x * x, 0) / v.length;
        t.ok(Math.abs(variance / (bound * bound / 3) - 1) < 0.1, `${k}: variance ${variance.toExponential(3)} ≈ b²/3 = ${(bound * bound / 3).toExponential(3)}`);
      }
    }
  }
  // ResBlocks: 3 encoder (one the downsampler), 2 middle, 5 decoder (one the upsampler); attention
  // at 4×4: 1 encoder, 1 middle, 2 decoder; the output conv.
  t.equal(zeroed, 2 * (10 + 4 + 1), 'every zero_module weight and bias');
  t.ok(uniform > 20, 'and the rest are drawn');
  for (const p of params.values()) p.dispose();
});

t.test('so the model predicts ε = 0 and a ResBlock that keeps its channels passes its input through', async (t) => {
  const unet = UNet.initial(e, flags, 3);
  const x = e.tensor(Float32Array.from({ length: 2 * 3 * 64 }, (_, i) => Math.sin(i * 0.37)), [2, 3, 8, 8]);
  // Block 1 is input_blocks.0 (the input conv), block 2 input_blocks.1, a 32 → 32 ResBlock.
  t.equal(unet.plan.blocks[1].module, 'input_blocks.1');
  t.equal(unet.plan.blocks[1].layers[0].kind, 'res');
  const r = unet.forward(x, [10, 500], { taps: [1, 2], output: true });
  t.same(await r.taps.get(2)!.read(), await r.taps.get(1)!.read(), 'block 2 = block 1');
  t.ok((await r.output!.read()).every((v) => v === 0), 'ε̂ = 0');
  for (const v of [x, ...r.taps.values(), r.output!, ...unet.parameters().values()]) v.dispose();
});

t.test('the seed decides the draw', async (t) => {
  const key = 'input_blocks.1.0.in_layers.2.weight';
  const [a, b, c] = [1, 1, 2].map((s) => UNet.initial(e, flags, s));
  t.same(await a.param(key).read(), await b.param(key).read(), 'same seed, same weights');
  t.not((await a.param(key).read())[0], (await c.param(key).read())[0], 'another seed, other weights');
  for (const u of [a, b, c]) for (const p of u.parameters().values()) p.dispose();
});
