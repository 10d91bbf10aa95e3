// JPEG decoding against Pillow 9.4 (libjpeg-turbo), what torchvision's ImageFolder and
// guided-diffusion's loader read: test/fixtures/jpeg-pil.safetensors (made by make-jpeg.py) holds
// JPEGs Pillow wrote and the RGB pixels Pillow reads from them. Bit-exact (every 8-bit level) for
// one and three channels; CMYK within one level.
import t from 'tap';
import { openSafetensors } from '../../../src/model/checkpoint/safetensors.ts';
import { decodeImage } from '../../../src/train/data/image-folder.ts';
import { upsampleLikeLibjpeg } from '../../../src/train/data/jpeg-cmyk.ts';

const dump = await openSafetensors(new URL('../../fixtures/jpeg-pil.safetensors', import.meta.url).pathname);
t.teardown(() => dump.close());
const allCases = dump.keys().filter((k) => k.endsWith('.file')).map((k) => k.slice(0, -'.file'.length)).sort();
const cmykCases = allCases.filter((name) => name.startsWith('cmyk-'));
const cases = allCases.filter((name) => !name.startsWith('cmyk-'));
const file = async (name: string) => Uint8Array.from(await dump.read(`${name}.file`));

t.test("every pixel is Pillow's: 4:2:0, 4:2:2 and 4:4:4 chroma, progressive, grey, odd sizes", async (t) => {
  t.same(cases, ['grey', 'noise-420', 'one-pixel', 'photo-420', 'photo-422', 'photo-444', 'progressive-420']);
  for (const name of cases) {
    const [height, width] = dump.info(`${name}.expected`)!.shape;
    const want = await dump.read(`${name}.expected`);
    const got = decodeImage(await file(name));
    t.same([got.width, got.height], [width, height], `${name}: size`);
    const differing = got.data.reduce((n, v, i) => n + (v === want[i] ? 0 : 1), 0);
    t.equal(differing, 0, `${name}: ${width}×${height}, values differing from Pillow's`);
  }
});

// Pillow writes CMYK with its `subsampling` on the first plane: M, Y and K at half C's width
// (cmyk-422) or half its width and height (cmyk-420). libjpeg interpolates those planes; jpeg-js
// repeated their samples, 36, 41 and 70 levels off Pillow here (the noise the most). cmyk-no-adobe
// is cmyk-444 without its Adobe marker, which jpeg-js refused and Pillow reads as Adobe CMYK.
t.test("CMYK JPEGs are within one level of Pillow's pixels, planes at half size and no Adobe marker included", async (t) => {
  t.same(cmykCases, ['cmyk-420', 'cmyk-422', 'cmyk-444', 'cmyk-no-adobe', 'cmyk-noise-420']);
  for (const name of cmykCases) {
    const [height, width] = dump.info(`${name}.expected`)!.shape;
    const want = await dump.read(`${name}.expected`);
    const got = decodeImage(await file(name));
    t.same([got.width, got.height], [width, height], `${name}: size`);
    const worst = got.data.reduce((m, v, i) => Math.max(m, Math.abs(v - want[i]!)), 0);
    t.ok(worst <= 1, `${name}: ${width}×${height}, largest difference from Pillow ${worst} levels`);
  }
});

// libjpeg-turbo's jdsample.c, worked by hand. h1v2 (no fixture: Pillow writes no 4:4:0 CMYK):
// (3·nearer row + further row + 1, or + 2 below) >> 2, rows above the first and below the last
// being copies of them. h2v2: column sums 3·nearer + further, then (3·nearer sum + further sum + 8,
// or + 7 to the right) >> 4, the end columns (4·sum + 8 or 7) >> 4. h2v1: (3·nearer + further + 1,
// or + 2 to the right) >> 2, the end samples kept. Planes 2 samples across or narrower are
// repeated (null: jpeg-js's own repetition stands), as are other factors.
t.test('upsampleLikeLibjpeg follows jdsample.c: h1v2, h2v2, h2v1, and repetition elsewhere', async (t) => {
  const rows = (...r: number[][]) => r.map((v) => Uint8Array.from(v));
  const values = (out: Uint8Array[] | null) => out!.map((r) => [...r]);
  t.same(values(upsampleLikeLibjpeg(rows([1], [3]), 1, 2, 1, 2)), [[1], [2], [2], [3]], 'h1v2');
  t.same(values(upsampleLikeLibjpeg(rows([0, 4, 9, 0], [2, 7, 1, 0], [99, 99, 99, 99]), 3, 2, 2, 2)), [
    [0, 1, 3, 5, 8, 9],
    [1, 2, 4, 5, 6, 7],
    [2, 3, 5, 5, 4, 3],
    [2, 3, 6, 5, 3, 1],
  ], 'h2v2 (a plane padded to 4 × 3 samples, 3 × 2 of them real: the row below the last is the last)');
  t.same(values(upsampleLikeLibjpeg(rows([0, 40, 80, 99]), 3, 1, 2, 1)), [[0, 10, 30, 50, 70, 80]], 'h2v1');
  const narrow = rows([10, 20], [30, 40]);
  t.equal(upsampleLikeLibjpeg(narrow, 2, 2, 2, 1), null, 'h2v1, 2 across');
  t.equal(upsampleLikeLibjpeg(narrow, 2, 2, 2, 2), null, 'h2v2, 2 across');
  t.equal(upsampleLikeLibjpeg(narrow, 2, 2, 4, 1), null, 'factor 4');
});

t.test('a file that ends before its image does is refused, as Pillow refuses it; the decoder goes on', async (t) => {
  for (const [name, keep] of JSON.parse(dump.metadata.truncated) as [string, number][]) {
    const cut = (await file(name)).subarray(0, keep);
    t.throws(() => decodeImage(cut), /JPEG: the file ends before its image does \(truncated\)/, `${name} cut to ${keep} bytes`);
  }
  // Headers and no scan: libjpeg's own error, named.
  const photo = await file('photo-420');
  const sos = photo.findIndex((v, i) => v === 0xff && photo[i + 1] === 0xda);
  t.throws(() => decodeImage(Uint8Array.from([...photo.subarray(0, sos), 0xff, 0xd9])), /^JPEG: .*(no image|SOS)/);
  t.equal(decodeImage(photo).width, 45, 'the next file decodes');
});

// libjpeg's error exit left the WebAssembly decoder's stack and heap behind: after about 95 files
// like this one every later JPEG was refused as corrupted (after about 32 of some others, the next
// valid one hung the process). The decoder is now replaced after each failure.
t.test('a hundred JPEGs that libjpeg refuses leave the next one decoding as Pillow does', async (t) => {
  const photo = await file('photo-420');
  const sos = photo.findIndex((v, i) => v === 0xff && photo[i + 1] === 0xda);
  const headersOnly = Uint8Array.from([...photo.subarray(0, sos), 0xff, 0xd9]);
  let refused = 0;
  for (let i = 0; i < 100; i++) {
    try {
      decodeImage(headersOnly);
    } catch (err) {
      if (/^JPEG: .*(no image|SOS)/.test((err as Error).message)) refused++;
    }
  }
  t.equal(refused, 100, 'each refused with libjpeg\'s message');
  const want = await dump.read('photo-420.expected');
  const got = decodeImage(photo);
  t.equal(got.data.reduce((n, v, i) => n + (v === want[i] ? 0 : 1), 0), 0, "then every pixel is Pillow's");
});
