import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encode as encodePng } from 'fast-png';
import jpeg from 'jpeg-js';
import t from 'tap';
import { decodeImage, loadBatch, preprocess, scanImageFolder, validateImageFolder } from '../../../src/train/data/image-folder.ts';

const rgb = (w: number, h: number, f: (x: number, y: number) => [number, number, number]) => {
  const d = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) d.set(f(x, y), (y * w + x) * 3);
  return d;
};

async function makeFolder(): Promise<string> {
  const root = await mkdtemp(join(tmpdir(), 'difrep-folder-'));
  for (const c of ['cat', 'ant', 'bee']) await mkdir(join(root, c));
  await writeFile(join(root, 'ant', 'red.png'), encodePng({ width: 6, height: 4, data: rgb(6, 4, () => [255, 0, 0]), channels: 3, depth: 8 }));
  await writeFile(join(root, 'ant', 'grey.png'), encodePng({ width: 5, height: 5, data: new Uint8Array(25).fill(51), channels: 1, depth: 8 }));
  const j = jpeg.encode({ width: 16, height: 16, data: Buffer.from(rgb(16, 16, () => [128, 128, 128]).reduce<number[]>((a, v, i) => (a.push(v), i % 3 === 2 && a.push(255), a), [])) }, 95);
  await writeFile(join(root, 'bee', 'grey.jpg'), j.data);
  await writeFile(join(root, 'bee', 'broken.png'), new Uint8Array([0x89, 0x50, 1, 2, 3]));
  await writeFile(join(root, 'cat', 'notes.txt'), 'not an image');
  await writeFile(join(root, 'cat', 'only.png'), encodePng({ width: 2, height: 2, data: rgb(2, 2, () => [0, 255, 0]), channels: 3, depth: 8 }));
  return root;
}

t.test('an ImageFolder: sorted classes, PNG and JPEG found, one-image classes warned, broken files skipped and reported', async (t) => {
  const root = await makeFolder();
  const f = await scanImageFolder(root);
  t.same(f.classes, ['ant', 'bee', 'cat']);
  t.equal(f.files.length, 5);
  t.same(f.warnings, ['class "cat" has a single image']);
  const { folder, skipped } = await validateImageFolder(f);
  t.equal(folder.files.length, 4);
  t.equal(skipped.length, 1);
  t.match(skipped[0], /broken\.png/);
  t.same(folder.labels, [0, 0, 1, 2]);
  await rm(root, { recursive: true });
  await t.rejects(scanImageFolder(join(root, 'gone')), /does not exist/);
});

t.test('decoding and preprocessing give the pixel values, in [-1, 1], CHW', async (t) => {
  const root = await makeFolder();
  const { images, failed } = await loadBatch([join(root, 'ant', 'red.png'), join(root, 'ant', 'grey.png'), join(root, 'bee', 'grey.jpg')], 4);
  t.equal(failed.length, 0);
  const plane = 16;
  t.ok(images.subarray(0, plane).every((v) => Math.abs(v - 1) < 1e-6), 'red channel of the red image is +1');
  t.ok(images.subarray(plane, 3 * plane).every((v) => Math.abs(v + 1) < 1e-6), 'green and blue are −1');
  t.ok(images.subarray(3 * plane, 6 * plane).every((v) => Math.abs(v - (51 / 127.5 - 1)) < 1e-6), 'grey PNG replicated to 3 channels');
  t.ok(images.subarray(6 * plane, 9 * plane).every((v) => Math.abs(v - (128 / 127.5 - 1)) < 0.03), 'grey JPEG within JPEG error');
  await rm(root, { recursive: true });
});

t.test('shorter side to size, centre crop and flip, worked by hand', async (t) => {
  // 4×2 image, columns 0..3 = 0, 51, 153, 255: the shorter side is already 2, the centre crop keeps columns 1 and 2.
  const img = { width: 4, height: 2, data: rgb(4, 2, (x) => { const v = [0, 51, 153, 255][x]; return [v, v, v]; }) };
  const out = new Float32Array(3 * 4);
  preprocess(img, 2, false, out, 0);
  t.same(Array.from(out.subarray(0, 4)).map((v) => Math.round((v + 1) * 127.5)), [51, 153, 51, 153]);
  preprocess(img, 2, true, out, 0);
  t.same(Array.from(out.subarray(0, 4)).map((v) => Math.round((v + 1) * 127.5)), [153, 51, 153, 51]);
  // 4×4 → 2×2 averages 2×2 blocks.
  const big = { width: 4, height: 4, data: rgb(4, 4, (x, y) => { const v = 10 * (x + 4 * y); return [v, v, v]; }) };
  preprocess(big, 2, false, out, 0);
  t.same(Array.from(out.subarray(0, 4)).map((v) => Math.round((v + 1) * 127.5)), [25, 45, 105, 125]);
  t.throws(() => decodeImage(new Uint8Array([1, 2, 3, 4])), /neither PNG nor JPEG/);
});
