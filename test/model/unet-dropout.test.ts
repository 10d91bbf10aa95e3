// ResBlock dropout in training mode (ForwardOptions.dropoutSeed): guided-diffusion's nn.Dropout sits
// between out_layers' SiLU and its conv. With that conv made the identity (a centred delta kernel,
// no bias), block 2 (input_blocks.1, a 32 → 32 ResBlock) returns its input plus the dropped
// activations, so each value of (block 2 − block 1) in training is 0 or exactly 1/(1 − p) times its
// value in eval mode.
import t from 'tap';
import { createEngine } from '../../src/engine/engine.ts';
import { UNet } from '../../src/model/unet.ts';
import { imagesPerChunk, largestBindingPerImage } from '../../src/model/unet-bindings.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();
const flags = {
  image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '16',
  num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true, dropout: 0.4,
};

function withIdentityConv(unet: UNet): UNet {
  const w = new Float32Array(32 * 32 * 9);
  for (let c = 0; c < 32; c++) w[(c * 32 + c) * 9 + 4] = 1;
  const weights = new Map(unet.parameters());
  weights.set('input_blocks.1.0.out_layers.3.weight', unet.engine.tensor(w, [32, 32, 3, 3]));
  weights.set('input_blocks.1.0.out_layers.3.bias', unet.engine.zeros([32]));
  return unet.withWeights(weights);
}

const x = (eng = e) => eng.tensor(Float32Array.from({ length: 3 * 3 * 1024 }, (_, i) => Math.sin(i * 0.91)), [3, 3, 32, 32]);
const ts = [20, 400, 900];

async function residual(unet: UNet, dropoutSeed?: number) {
  const r = unet.forward(x(unet.engine), ts, { taps: [1, 2], dropoutSeed });
  const [b1, b2] = [await r.taps.get(1)!.read(), await r.taps.get(2)!.read()];
  return b2.map((v, i) => v - b1[i]);
}

t.test('each dropped activation is 0, each kept one 1/(1 − p) times its eval value, about p of them dropped', async (t) => {
  const unet = withIdentityConv(UNet.random(e, flags, 9));
  const evalMode = await residual(unet);
  const trained = await residual(unet, 77);
  let dropped = 0;
  let wrong = 0;
  // Within float32 rounding of the block's sum (block 1 + the conv, less block 1).
  const tol = 1e-5 * Math.max(...evalMode.map(Math.abs));
  for (let i = 0; i < trained.length; i++) {
    if (Math.abs(trained[i]) <= tol) dropped++;
    else if (Math.abs(trained[i] - evalMode[i] / 0.6) > tol) wrong++;
  }
  t.equal(wrong, 0, 'kept values scaled by 1/(1 − p)');
  t.ok(Math.abs(dropped / trained.length - 0.4) < 0.03, `${dropped} of ${trained.length} dropped`);
  t.same(await residual(unet, 77), trained, 'same seed, same masks');
  t.not((await residual(unet, 78)).join(), trained.join(), 'another seed, other masks');
  t.same(await residual(withIdentityConv(UNet.random(e, { ...flags, dropout: 0 }, 9)), 77), await residual(withIdentityConv(UNet.random(e, { ...flags, dropout: 0 }, 9))), 'dropout 0: training is eval');
});

t.test('the masks are per image: the same output when the batch runs in chunks of one image', async (t) => {
  const unet = UNet.random(e, flags, 9);
  const whole = unet.forward(x(), ts, { output: true, dropoutSeed: 5 });
  // Room for one image's largest binding (block 8's skip concat [96, 32, 32]) and every weight, not two images.
  const perImage = largestBindingPerImage(e, unet.plan, { last: unet.numBlocks, output: true, gradients: false }).bytesPerImage;
  const small = await createEngine({ device: e.device, maxBindingBytes: perImage + 4096, tuning: e.tuning });
  const copy = UNet.random(small, flags, 9);
  const chunked = copy.forward(x(small), ts, { output: true, dropoutSeed: 5 });
  t.equal(imagesPerChunk(small, copy.plan, { last: copy.numBlocks, output: true, gradients: false }), 1, 'one image per chunk');
  t.same(Array.from(await chunked.output!.read()), Array.from(await whole.output!.read()));
  await small.dispose();
});
