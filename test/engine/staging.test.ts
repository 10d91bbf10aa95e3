// The staging ring (src/engine/staging.ts): uploads and readbacks through reused mapped buffers
// must never hand one buffer to two transfers in flight, whatever the sizes and however they mix.
import t from 'tap';
import { StagingRing } from '../../src/engine/staging.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();
const pattern = (n: number, seed: number) => Float32Array.from({ length: n }, (_, i) => seed * 1000 + i);

t.test('uploads recorded in one batch each get their own buffer', async (t) => {
  const sizes = [10, 70_000, 3, 16_384, 70_000, 1];
  const tensors = sizes.map((n) => e.empty([n], 'staged'));
  sizes.forEach((n, i) => e.writeBuffer(tensors[i].buffer, 0, pattern(n, i + 1)));
  const back = await e.readTensors(tensors);
  back.forEach((b, i) => t.same(Array.from(b), Array.from(pattern(sizes[i], i + 1)), `upload ${i} (${sizes[i]} floats)`));
  for (const x of tensors) x.dispose();
});

t.test('reused buffers carry each round\'s data, not a stale one, over many rounds and sizes', async (t) => {
  const x = e.empty([50_000], 'reused');
  for (let round = 0; round < 12; round++) {
    const n = [50_000, 17, 33_000, 4096][round % 4];
    e.writeBuffer(x.buffer, 0, pattern(n, round + 7));
    const back = (await x.read()).subarray(0, n);
    if (Array.from(back).some((v, i) => v !== (round + 7) * 1000 + i)) t.fail(`round ${round}: stale or mixed data`);
    await e.sync();
  }
  t.pass('12 rounds');
  x.dispose();
});

t.test('concurrent readbacks each get their own buffer', async (t) => {
  const sizes = [5, 20_000, 20_000, 300];
  const tensors = sizes.map((n, i) => e.tensor(pattern(n, i + 20), [n]));
  const back = await Promise.all(tensors.map((x) => x.read()));
  back.forEach((b, i) => t.same(Array.from(b), Array.from(pattern(sizes[i], i + 20)), `read ${i}`));
  for (const x of tensors) x.dispose();
});

t.test('the ring reuses buffers by size class and never keeps more than its cap', async (t) => {
  const ring = new StagingRing((d) => e.device.createBuffer(d), 256 * 1024);
  const a = ring.readbackBuffer(100);
  t.equal(a.size, 64 * 1024, 'the smallest size class');
  ring.returnReadback(a);
  t.equal(ring.readbackBuffer(1000), a, 'a returned buffer is reused for a transfer it fits');
  const big = ring.readbackBuffer(300 * 1024);
  t.equal(big.size, 300 * 1024, 'over the cap: a buffer of its own size');
  ring.returnReadback(big);
  t.not(ring.readbackBuffer(300 * 1024), big, 'and it is not kept');
  const up = ring.uploadBuffer(10);
  t.equal(up.mapState, 'mapped', 'upload buffers come mapped');
  up.unmap();
  ring.recycle(up);
  t.equal(up.mapState, 'pending', 'a recycled upload buffer is re-mapped before reuse');
  await e.sync();
  ring.destroy();
});

// A 3-byte write went out as 4 bytes, the fourth whatever the reused staging buffer held; an offset
// of 2 became a GPU validation error that failed the engine for good.
t.test('writeBuffer refuses a length or offset that is not a multiple of 4, and the engine goes on', async (t) => {
  const x = e.zeros([4], 'x');
  t.throws(() => e.writeBuffer(x.buffer, 0, Uint8Array.of(1, 2, 3)), /writeBuffer to .*x.*: 3 bytes at offset 0; both must be multiples of 4/);
  t.throws(() => e.writeBuffer(x.buffer, 2, new Float32Array(1)), /4 bytes at offset 2; both must be multiples of 4/);
  e.writeBuffer(x.buffer, 4, Float32Array.of(7));
  t.same(Array.from(await x.read()), [0, 7, 0, 0]);
  x.dispose();
});
