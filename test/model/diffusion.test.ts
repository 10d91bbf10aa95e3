// The noising schedule and the seeded noise refuse what would silently go wrong: a schedule with
// β > 1 (a negative ᾱ, NaN x_t), and seeds the 32-bit generator would alias to another seed.
import t from 'tap';
import { gaussianNoise, linearSchedule, qSample } from '../../src/model/diffusion.ts';
import { testEngine } from '../helpers/check.ts';

t.test('linearSchedule refuses step counts whose β would exceed 1, as guided-diffusion asserts 0 < β ≤ 1', async (t) => {
  for (const steps of [2, 10, 19, 0, -5, 1.5, Number.NaN]) {
    t.throws(() => linearSchedule(steps), { name: 'RangeError', message: new RegExp(`linearSchedule: steps must be 1 or an integer of at least 20 .*got ${steps}$`) }, `${steps}`);
  }
  // 20 steps: β runs from 0.005 to exactly 1, so ᾱ reaches 0 at the last step and is positive before.
  const { alphasCumprod } = linearSchedule(20);
  t.ok(alphasCumprod.slice(0, 19).every((a) => a > 0 && a < 1), 'ᾱ in (0, 1) before the last step');
  t.equal(alphasCumprod[19], 0);
  // guided-diffusion's get_named_beta_schedule('linear', 1) is linspace(0.1, 20, 1) = [0.1].
  t.same(Array.from(linearSchedule(1).alphasCumprod), [0.9]);
  const e = await testEngine();
  const x = qSample(e, linearSchedule(1000), e.tensor([0.5, -0.5], [1, 2, 1, 1]), [5], e.tensor([1, 1], [1, 2, 1, 1]));
  t.ok((await x.read()).every(Number.isFinite));
});

t.test('gaussianNoise refuses seeds outside 0…2³²−1 and fractional ones (2³² and 0.7 drew seed 0\'s noise)', async (t) => {
  for (const seed of [-1, 2 ** 32, 0.7, Number.NaN, Number.POSITIVE_INFINITY]) {
    t.throws(() => gaussianNoise(4, seed), { name: 'RangeError', message: `gaussianNoise: seed must be an integer from 0 to 4294967295 (the generator's seeds are 32-bit), got ${seed}` }, `${seed}`);
  }
  const ends = [0, 1, 2 ** 31, 2 ** 32 - 1].map((seed) => Array.from(gaussianNoise(8, seed)).join());
  t.equal(new Set(ends).size, 4, 'the ends of the range draw four different streams');
});
