// UNet.forward refuses inputs it would otherwise turn into a plausible wrong result: a timestep that
// is not finite (every feature NaN), feedback of another shape than its block's output (broadcast:
// the same values added to every image) or for a block the forward never runs (ignored).
import t from 'tap';
import { UNet } from '../../src/model/unet.ts';
import { testEngine } from '../helpers/check.ts';
import { MINI_UNET } from '../helpers/images.ts';

const e = await testEngine();
const unet = UNet.random(e, MINI_UNET, 0);
const x = e.zeros([2, 3, 16, 16]);
const block3 = unet.plan.blocks[2]; // [2, C, s, s] out

t.test('a timestep that is not a finite number is refused', async (t) => {
  for (const bad of [Number.NaN, Number.POSITIVE_INFINITY]) {
    t.throws(() => unet.forward(x, [150, bad], { taps: [3] }), new RegExp(`timestep ${bad} of image 1 is not a finite number`));
  }
});

t.test('feedback must have its block\'s output shape and a block the forward runs', async (t) => {
  const full = [2, block3.outChannels, block3.size, block3.size];
  for (const shape of [[1, ...full.slice(1)], full.slice(1), [block3.size]]) {
    const fb = e.zeros(shape);
    t.throws(() => unet.forward(x, [150, 150], { taps: [3], addToBlock: new Map([[3, fb]]) }), /addToBlock: the feedback for block 3 is \[.*\]; block 3's output is \[2, ?\d+, ?\d+, ?\d+\]/, `[${shape}]`);
    fb.dispose();
  }
  const fb = e.zeros(full);
  t.throws(() => unet.forward(x, [150, 150], { taps: [2], addToBlock: new Map([[3, fb]]) }), /addToBlock: block 3 is past the last block this forward runs \(2/);
  t.throws(() => unet.forward(x, [150, 150], { taps: [3], addToBlock: new Map([[99, fb]]) }), /addToBlock: block 99 does not exist: this U-Net has blocks 1\.\.\d+/);
  // The right shape is added: block 3's output moves by exactly the feedback.
  const plain = await e.tidy(() => unet.forward(x, [150, 150], { taps: [3] }).taps.get(3)!).read();
  const ones = e.tensor(new Float32Array(fb.size).fill(1), full);
  const moved = await e.tidy(() => unet.forward(x, [150, 150], { taps: [3], addToBlock: new Map([[3, ones]]) }).taps.get(3)!).read();
  t.ok(moved.every((v, i) => Math.abs(v - plain[i] - 1) < 1e-5), 'feedback of the output\'s shape is added');
});
