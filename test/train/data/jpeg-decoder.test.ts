// JPEG decoding against Pillow 9.4 (libjpeg-turbo), what torchvision's ImageFolder and
// guided-diffusion's loader read: test/fixtures/jpeg-pil.safetensors (made by make-jpeg.py) holds
// JPEGs Pillow wrote and the RGB pixels Pillow reads from them. Bit-exact: every 8-bit level.
import t from 'tap';
import { openSafetensors } from '../../../src/model/checkpoint/safetensors.ts';
import { decodeImage } from '../../../src/train/data/image-folder.ts';

const dump = await openSafetensors(new URL('../../fixtures/jpeg-pil.safetensors', import.meta.url).pathname);
t.teardown(() => dump.close());
const cases = dump.keys().filter((k) => k.endsWith('.file')).map((k) => k.slice(0, -'.file'.length));
const file = async (name: string) => Uint8Array.from(await dump.read(`${name}.file`));

t.test("every pixel is Pillow's: 4:2:0, 4:2:2 and 4:4:4 chroma, progressive, grey, odd sizes", async (t) => {
  t.same(cases.sort(), ['grey', 'noise-420', 'one-pixel', 'photo-420', 'photo-422', 'photo-444', 'progressive-420']);
  for (const name of cases) {
    const [height, width] = dump.info(`${name}.expected`)!.shape;
    const want = await dump.read(`${name}.expected`);
    const got = decodeImage(await file(name));
    t.same([got.width, got.height], [width, height], `${name}: size`);
    const differing = got.data.reduce((n, v, i) => n + (v === want[i] ? 0 : 1), 0);
    t.equal(differing, 0, `${name}: ${width}×${height}, values differing from Pillow's`);
  }
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
