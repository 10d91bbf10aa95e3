import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { encode as encodePng } from 'fast-png';
import jpeg from 'jpeg-js';
import t from 'tap';
import { DecodePool } from '../../../src/train/data/decode-pool.ts';
import { decodeImage, folderFingerprint, loadBatch, MAX_IMAGE_PIXELS, preprocess, scanImageFolder, validateImageFolder } from '../../../src/train/data/image-folder.ts';
import { readImageHeader } from '../../../src/train/data/image-header.ts';

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
  // Images torchvision or guided-diffusion would read, which difrep cannot decode: left out, warned about.
  await writeFile(join(root, 'cat', 'photo.webp'), 'RIFF');
  await writeFile(join(root, 'cat', 'anim.GIF'), 'GIF89a');
  await writeFile(join(root, 'cat', 'scan.gif'), 'GIF89a');
  await writeFile(join(root, 'cat', 'only.png'), encodePng({ width: 2, height: 2, data: rgb(2, 2, () => [0, 255, 0]), channels: 3, depth: 8 }));
  return root;
}

t.test('an ImageFolder: sorted classes, PNG and JPEG found, one-image classes warned, broken files skipped and reported', async (t) => {
  const root = await makeFolder();
  const f = await scanImageFolder(root);
  t.same(f.classes, ['ant', 'bee', 'cat']);
  t.equal(f.files.length, 5);
  t.same(f.warnings, [`${join(root, 'cat')}: 3 image files left out (.gif 2, .webp 1): only PNG and JPEG are read; convert them to use them`, 'class "cat" has a single image']);
  const { folder, skipped } = await validateImageFolder(f);
  t.equal(folder.files.length, 4);
  t.equal(skipped.length, 1);
  t.equal(skipped[0].file, join(root, 'bee', 'broken.png'));
  t.match(skipped[0].error, /PNG/);
  t.same(folder.labels, [0, 0, 1, 2]);
  await rm(root, { recursive: true });
  await t.rejects(scanImageFolder(join(root, 'gone')), /does not exist/);
  await writeFile(join(tmpdir(), `difrep-not-a-folder-${process.pid}`), 'x');
  await t.rejects(scanImageFolder(join(tmpdir(), `difrep-not-a-folder-${process.pid}`)), /image folder .*difrep-not-a-folder-\d+ is a file, not a folder of class folders/);
  await rm(join(tmpdir(), `difrep-not-a-folder-${process.pid}`));
});

t.test('decoding and preprocessing give the pixel values, in [-1, 1], CHW', async (t) => {
  const root = await makeFolder();
  const files = [join(root, 'ant', 'red.png'), join(root, 'ant', 'grey.png'), join(root, 'bee', 'grey.jpg')];
  const { images, results } = await loadBatch(files, 4);
  t.same(results, files.map((file) => ({ file, ok: true })));
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

// PNG by hand (PNG spec §5): signature, then chunks of length (u32 BE), type, data, CRC-32 of type + data.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, data.length);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  v.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}
function png(width: number, height: number, depth: number, colorType: number, rows: Uint8Array, extra: Uint8Array[] = [], interlace = 0): Uint8Array {
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr.set([depth, colorType, 0, 0, interlace], 8);
  const parts = [Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a), chunk('IHDR', ihdr), ...extra, chunk('IDAT', deflateSync(rows)), chunk('IEND', new Uint8Array())];
  return Uint8Array.from(parts.flatMap((p) => Array.from(p)));
}

// A class left with no readable image was kept with a label and no images (warned as "a single
// image" before decoding): a head never saw it and its test images could never score.
t.test('a class folder none of whose images can be read is refused, as an empty one is', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'difrep-folder-'));
  for (const c of ['a', 'b', 'c']) await mkdir(join(root, c));
  const good = encodePng({ width: 2, height: 2, data: rgb(2, 2, () => [9, 9, 9]), channels: 3, depth: 8 });
  await writeFile(join(root, 'a', 'x.png'), good);
  await writeFile(join(root, 'b', 'x.png'), 'not an image at all');
  await writeFile(join(root, 'c', 'x.png'), good);
  await t.rejects(validateImageFolder(await scanImageFolder(root)), new RegExp(`^class folder ${join(root, 'b').replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} holds no readable image \\(.*x\\.png: neither PNG nor JPEG\\), but every folder in .* is a class and takes a label`));
  await writeFile(join(root, 'b', 'y.png'), good);
  t.same((await validateImageFolder(await scanImageFolder(root))).folder.labels, [0, 1, 2], 'with one readable image it is kept');
  await rm(root, { recursive: true });
});

t.test('a class folder whose name holds ": " keeps its unreadable file out (structured results, also from the worker threads)', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'difrep-folder-'));
  await mkdir(join(root, 'cls: x'));
  await mkdir(join(root, 'dog'));
  const good = encodePng({ width: 2, height: 2, data: rgb(2, 2, () => [9, 9, 9]), channels: 3, depth: 8 });
  await writeFile(join(root, 'cls: x', 'a.png'), good);
  await writeFile(join(root, 'cls: x', 'bad.png'), 'not an image at all');
  await writeFile(join(root, 'dog', 'b.png'), good);
  const { folder, skipped } = await validateImageFolder(await scanImageFolder(root));
  t.same(folder.files, [join(root, 'cls: x', 'a.png'), join(root, 'dog', 'b.png')]);
  t.same(folder.labels, [0, 1]);
  t.same(skipped, [{ file: join(root, 'cls: x', 'bad.png'), error: 'neither PNG nor JPEG' }]);
  const pool = new DecodePool(1);
  try {
    const ok = await pool.decode([join(root, 'cls: x', 'a.png'), join(root, 'dog', 'b.png')], 2);
    t.same(ok.results.map((r) => r.ok), [true, true]);
    t.ok(ok.images.every((v) => Math.abs(v - (9 / 127.5 - 1)) < 1e-6), 'pixels decoded in the worker');
    await t.rejects(pool.decode([join(root, 'dog', 'b.png'), join(root, 'cls: x', 'bad.png')], 2), { message: `cannot decode 1 of 2 images: ${join(root, 'cls: x', 'bad.png')}: neither PNG nor JPEG` });
  } finally {
    await pool.close();
  }
  await rm(root, { recursive: true });
});

// The fingerprint was taken from one read of each file and the decoders read them again later:
// an image rewritten in between had its new features stored under the old contents' fingerprint.
t.test('a file rewritten after the folder was fingerprinted is refused by the decoders, naming it', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'difrep-folder-'));
  await mkdir(join(root, 'cat'));
  const grey = (v: number) => encodePng({ width: 2, height: 2, data: rgb(2, 2, () => [v, v, v]), channels: 3, depth: 8 });
  await writeFile(join(root, 'cat', 'a.png'), grey(9));
  await writeFile(join(root, 'cat', 'b.png'), grey(50));
  const folder = await scanImageFolder(root);
  const { fingerprint, sha256 } = await folderFingerprint(folder, [0, 1]);
  t.same(sha256, [createHash('sha256').update(grey(9)).digest('hex'), createHash('sha256').update(grey(50)).digest('hex')], 'each file\'s SHA-256');
  t.match(fingerprint, /^contents-sha256:[0-9a-f]{64}$/);
  const pool = new DecodePool(1);
  try {
    t.same((await pool.decode(folder.files, 2, undefined, sha256)).results.map((r) => r.ok), [true, true]);
    await writeFile(join(root, 'cat', 'b.png'), grey(51)); // same size, other pixels
    await t.rejects(pool.decode(folder.files, 2, undefined, sha256), { message: `cannot decode 1 of 2 images: ${join(root, 'cat', 'b.png')}: its contents changed after this run fingerprinted the folder (the cache records that fingerprint): leave the images as they are while the run lasts, then run it again` });
    const same = await loadBatch([folder.files[0]], 2, undefined, {}, [sha256[0]]);
    t.same(same.results, [{ file: folder.files[0], ok: true }], 'loadBatch checks an unchanged file and decodes it');
  } finally {
    await pool.close();
  }
  await rm(root, { recursive: true });
});

t.test('symlinked class folders and files are followed; a link loop is walked once and reported', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'difrep-folder-'));
  const elsewhere = await mkdtemp(join(tmpdir(), 'difrep-elsewhere-'));
  const img = encodePng({ width: 2, height: 2, data: rgb(2, 2, () => [0, 0, 0]), channels: 3, depth: 8 });
  await writeFile(join(elsewhere, 'd1.png'), img);
  await writeFile(join(elsewhere, 'outside.png'), img);
  await symlink(elsewhere, join(root, 'dog')); // a class folder that is a link
  await mkdir(join(root, 'cat', 'deeper'), { recursive: true });
  await writeFile(join(root, 'cat', 'c1.png'), img);
  await writeFile(join(root, 'cat', 'deeper', 'c2.png'), img);
  await symlink(join(elsewhere, 'outside.png'), join(root, 'cat', 'linked.png')); // a file that is a link
  await symlink(join(root, 'cat'), join(root, 'cat', 'deeper', 'loop')); // cat/deeper/loop → cat
  await symlink(join(elsewhere, 'gone.png'), join(root, 'cat', 'dangling.png'));
  const f = await scanImageFolder(root);
  t.same(f.classes, ['cat', 'dog']);
  t.same(f.files, [join(root, 'cat', 'c1.png'), join(root, 'cat', 'linked.png'), join(root, 'cat', 'deeper', 'c2.png'), join(root, 'dog', 'd1.png'), join(root, 'dog', 'outside.png')]);
  t.same(f.labels, [0, 0, 0, 1, 1]);
  t.equal(f.warnings.length, 2);
  t.match(f.warnings[0], `${join(root, 'cat', 'dangling.png')} is a broken symbolic link`);
  t.match(f.warnings[1], `${join(root, 'cat', 'deeper', 'loop')} leads to`);
  t.match(f.warnings[1], /already read \(a symbolic link loop/);
  await rm(root, { recursive: true });
  await rm(elsewhere, { recursive: true });
});

t.test('an image declaring more pixels than the limit is refused from its header, before decoding', async (t) => {
  // 16000 × 16000 8-bit RGB declared in IHDR, with a tiny IDAT: decoding it would need 768 MB.
  const bomb = png(16000, 16000, 8, 2, new Uint8Array(100));
  t.same(readImageHeader(bomb), { format: 'png', width: 16000, height: 16000 });
  // Pillow 9.4 warns above Image.MAX_IMAGE_PIXELS (89,478,485) and refuses above twice that.
  t.equal(MAX_IMAGE_PIXELS, 2 * 89_478_485, "Pillow's DecompressionBombError threshold");
  t.throws(() => decodeImage(bomb), { message: 'PNG declares 16000 × 16000 = 256,000,000 pixels, more than the limit of 178,956,970 (maxPixels); not decoded (shrink the image, or raise maxPixels if it is genuine)' });
  // 10000 × 10000 = 1e8 pixels: Pillow reads it (with a warning), so the header check passes it (the cut-short data is what fails).
  t.throws(() => decodeImage(png(10000, 10000, 8, 2, new Uint8Array(100))), /PNG: image data has 100 bytes/);
  // JPEG: SOI, an APP0 segment, then SOF0 declaring 20000 × 10000 (height first).
  const sof = Uint8Array.of(0xff, 0xd8, 0xff, 0xe0, 0, 4, 1, 2, 0xff, 0xff, 0xc0, 0, 11, 8, 0x27, 0x10, 0x4e, 0x20, 1, 1, 0x11, 0);
  t.same(readImageHeader(sof), { format: 'jpeg', width: 20000, height: 10000, components: 1 });
  t.throws(() => decodeImage(sof), /JPEG declares 20000 × 10000 = 200,000,000 pixels/);
  const root = await mkdtemp(join(tmpdir(), 'difrep-folder-'));
  await mkdir(join(root, 'a'));
  await writeFile(join(root, 'a', 'bomb.png'), bomb);
  await writeFile(join(root, 'a', 'wide.png'), encodePng({ width: 6, height: 4, data: rgb(6, 4, () => [1, 2, 3]), channels: 3, depth: 8 }));
  await writeFile(join(root, 'a', 'square.png'), encodePng({ width: 5, height: 5, data: rgb(5, 5, () => [1, 2, 3]), channels: 3, depth: 8 }));
  const { folder, skipped } = await validateImageFolder(await scanImageFolder(root));
  t.same(folder.files, [join(root, 'a', 'square.png'), join(root, 'a', 'wide.png')]);
  t.equal(skipped[0].file, join(root, 'a', 'bomb.png'));
  t.match(skipped[0].error, /16000 × 16000/);
  // The limit is an option: 24 pixels admits the 6 × 4 image and refuses the 5 × 5 one.
  const small = await validateImageFolder(folder, undefined, { maxPixels: 24 });
  t.same(small.folder.files, [join(root, 'a', 'wide.png')]);
  t.match(small.skipped[0], { file: join(root, 'a', 'square.png'), error: /5 × 5 = 25 pixels, more than the limit of 24/ });
  const pool = new DecodePool(1, { maxPixels: 24 });
  await t.rejects(pool.decode([join(root, 'a', 'square.png')], 2), /square\.png: PNG declares 5 × 5/);
  await pool.close();
  await rm(root, { recursive: true });
});

t.test('palette, 1-bit grey and 16-bit PNGs decode to their RGB values; a bad CRC is refused', (t) => {
  // 1-bit grey, 4 × 2: rows 1010 and 0110 (filter byte 0 before each row).
  const bits = decodeImage(png(4, 2, 1, 0, Uint8Array.of(0, 0b10100000, 0, 0b01100000)));
  t.same(Array.from(bits.data).filter((_, i) => i % 3 === 0), [255, 0, 255, 0, 0, 255, 255, 0]);
  // 2-bit palette, 3 × 1: indices 2, 0, 1 into [(10,20,30), (200,100,50), (1,2,3)].
  const plte = chunk('PLTE', Uint8Array.of(10, 20, 30, 200, 100, 50, 1, 2, 3));
  const pal = decodeImage(png(3, 1, 2, 3, Uint8Array.of(0, 0b10000100), [plte]));
  t.same(Array.from(pal.data), [1, 2, 3, 10, 20, 30, 200, 100, 50]);
  // 16-bit RGB, 1 × 1: 65535, 0, 257·128 → 255, 0, 128.
  const deep = decodeImage(png(1, 1, 16, 2, Uint8Array.of(0, 0xff, 0xff, 0, 0, 0x80, 0x80)));
  t.same(Array.from(deep.data), [255, 0, 128]);
  t.end();
});

// Pillow keeps a 16-bit colour sample's high byte (v >> 8: 0x00ff → 0, 0xff00 → 255, 0x80ff → 128);
// v/257 rounded gave 1, 254 and 129 — a level off on about a quarter of values.
t.test('16-bit colour PNGs keep the high byte as Pillow does; 16-bit grey is scaled by 1/257', (t) => {
  const rgb16 = decodeImage(png(1, 1, 16, 2, Uint8Array.of(0, 0x00, 0xff, 0xff, 0x00, 0x80, 0xff)));
  t.same(Array.from(rgb16.data), [0, 255, 128], 'RGB');
  const rgba16 = decodeImage(png(1, 1, 16, 6, Uint8Array.of(0, 0x00, 0xff, 0xff, 0x00, 0x80, 0xff, 0x12, 0x34)));
  t.same(Array.from(rgba16.data), [0, 255, 128], 'RGBA, alpha dropped');
  const la16 = decodeImage(png(2, 1, 16, 4, Uint8Array.of(0, 0xff, 0x00, 0, 0, 0x00, 0xff, 0xff, 0xff)));
  t.same(Array.from(la16.data), [255, 255, 255, 0, 0, 0], 'grey + alpha');
  // Grey: 256 → 1, 257·128 → 128, 65535 → 255 (Pillow would clip: 255, 255, 255).
  const grey16 = decodeImage(png(3, 1, 16, 0, Uint8Array.of(0, 0x01, 0x00, 0x80, 0x80, 0xff, 0xff)));
  t.same(Array.from(grey16.data), [1, 1, 1, 128, 128, 128, 255, 255, 255], 'grey');
  t.end();
});

// fast-png decoded a zlib stream that ends cleanly short of the last row's bytes with the missing
// pixels black (Pillow: "image file is truncated").
t.test('a PNG whose image data is shorter than its IHDR declares is refused; longer data is read', (t) => {
  // 4 × 2 RGB at 8 bits: 2 rows of a filter byte and 12 samples = 26 bytes.
  const rows = Uint8Array.from({ length: 26 }, (_, i) => (i % 13 === 0 ? 0 : i));
  t.same(Array.from(decodeImage(png(4, 2, 8, 2, rows)).data), Array.from(rows.filter((_, i) => i % 13 !== 0)));
  t.throws(() => decodeImage(png(4, 2, 8, 2, rows.subarray(0, 25))), /PNG: image data has 25 bytes, 4 × 2 at 24 bits a pixel needs 26 \(truncated or corrupted file\)/);
  t.throws(() => decodeImage(png(4, 2, 8, 2, rows.subarray(0, 14))), /image data has 14 bytes/);
  // Adam7 at 8-bit grey, 3 × 3: passes 1, 4, 5, 6, 7 (rows × (filter byte + columns)) hold
  // 1·2 + 1·2 + 1·3 + 2·2 + 1·4 = 15 bytes; passes 2 and 3 have no pixels.
  t.throws(() => decodeImage(png(3, 3, 8, 0, new Uint8Array(14), [], 1)), /image data has 14 bytes, 3 × 3 interlaced at 8 bits a pixel needs 15/);
  t.same(decodeImage(png(3, 3, 8, 0, new Uint8Array(15), [], 1)).data.length, 27, 'exactly enough');
  t.same(Array.from(decodeImage(png(4, 2, 8, 2, Uint8Array.from([...rows, 0, 0]))).data.subarray(0, 3)), [1, 2, 3], 'two bytes past the last row are ignored');
  const broken = png(4, 2, 1, 0, Uint8Array.of(0, 0b10100000, 0, 0b01100000));
  broken[broken.length - 20] ^= 1; // inside IDAT
  t.throws(() => decodeImage(broken), /CRC/i);
  t.end();
});

t.test('folders named .* are not classes and a class folder without an image is refused, so labels never shift', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'difrep-folder-'));
  const img = encodePng({ width: 2, height: 2, data: rgb(2, 2, () => [5, 5, 5]), channels: 3, depth: 8 });
  for (const c of ['.ipynb_checkpoints', 'cat', 'dog']) {
    await mkdir(join(root, c));
    await writeFile(join(root, c, 'a.png'), img);
  }
  const f = await scanImageFolder(root);
  t.same(f.classes, ['cat', 'dog']);
  t.same(f.files, [join(root, 'cat', 'a.png'), join(root, 'dog', 'a.png')]);
  t.same(f.labels, [0, 1], 'cat is 0 as in a split without the hidden folder');
  // "ant" would become class 0 and shift cat and dog to 1 and 2.
  await mkdir(join(root, 'ant'));
  await writeFile(join(root, 'ant', 'notes.txt'), 'not an image');
  const fix = `add images, or move the folder out of ${root} (or rename it to start with '.')`;
  await t.rejects(scanImageFolder(root), { message: `class folder ${join(root, 'ant')} holds no PNG or JPEG image (.png, .jpg, .jpeg), but every folder in ${root} is a class and takes a label: ${fix}` });
  await mkdir(join(root, 'bee'));
  await t.rejects(scanImageFolder(root), { message: `class folders ${join(root, 'ant')}, ${join(root, 'bee')} hold no PNG or JPEG image (.png, .jpg, .jpeg), but every folder in ${root} is a class and takes a label: ${fix}` });
  for (const c of ['ant', 'bee', 'cat', 'dog']) await rm(join(root, c), { recursive: true });
  await t.rejects(scanImageFolder(root), /has no class folders \(those named \.\* are skipped\)/);
  await rm(root, { recursive: true });
});

// Raw image data (PNG spec §7.3, §8.2, §9): Adam7 first splits the image into seven passes; each
// row's samples are packed from the high bit, and the row is filtered. Filters cycle 0–4 by row so
// every one is undone; with samples under 8 bits the byte to the left is "the pixel to the left".
const ADAM7 = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]];
function paeth(a: number, b: number, c: number): number {
  const pa = Math.abs(b - c);
  const pb = Math.abs(a - c);
  const pc = Math.abs(a + b - 2 * c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}
function imageData(samples: number[][], depth: number, interlace: boolean): Uint8Array {
  const out: number[] = [];
  let row = 0;
  for (const [x0, y0, dx, dy] of interlace ? ADAM7 : [[0, 0, 1, 1]]) {
    let prev: Uint8Array | undefined;
    for (let y = y0; y < samples.length; y += dy) {
      const s = samples[y].filter((_, x) => x >= x0 && (x - x0) % dx === 0);
      if (!s.length) break; // an empty pass has no rows
      const cur = new Uint8Array(Math.ceil((s.length * depth) / 8));
      s.forEach((v, i) => (cur[(i * depth) >> 3] |= v << (8 - depth - ((i * depth) & 7))));
      const f = row++ % 5;
      const b = (i: number) => prev?.[i] ?? 0;
      const predict = (i: number) => [0, cur[i - 1] ?? 0, b(i), ((cur[i - 1] ?? 0) + b(i)) >> 1, paeth(cur[i - 1] ?? 0, b(i), b(i - 1))][f];
      out.push(f, ...cur.map((v, i) => v - predict(i)));
      prev = cur;
    }
  }
  return Uint8Array.from(out);
}

t.test('1-, 2- and 4-bit grey and palette PNGs, interlaced (Adam7) or not, decode to the pixel values written', (t) => {
  // The audit's case: 2-bit grey [0, 3, 1 / 3, 0, 1], interlaced.
  const audit = decodeImage(png(3, 2, 2, 0, imageData([[0, 3, 1], [3, 0, 1]], 2, true), [], 1));
  t.same(Array.from(audit.data).filter((_, i) => i % 3 === 0), [0, 255, 85, 255, 0, 85]);
  const palette = Array.from({ length: 16 }, (_, i) => [i * 17, 255 - i * 16, (i * 53) % 256]);
  for (const depth of [1, 2, 4]) {
    const max = (1 << depth) - 1;
    // 11 × 9 fills every pass with rows of several bytes; 3 × 2 leaves passes empty; 1 × 1 keeps only the first.
    for (const [w, h] of [[11, 9], [3, 2], [1, 1]]) {
      const samples = Array.from({ length: h }, (_, y) => Array.from({ length: w }, (_, x) => (3 * x + 5 * y + x * y) % (max + 1)));
      for (const [colorType, expect, extra] of [
        [0, (s: number) => Array(3).fill(Math.round((s * 255) / max)), []],
        [3, (s: number) => palette[s], [chunk('PLTE', Uint8Array.from(palette.slice(0, max + 1).flat()))]],
      ] as const) {
        for (const interlace of [0, 1]) {
          const name = `${depth}-bit ${colorType ? 'palette' : 'grey'} ${w} × ${h}${interlace ? ' interlaced' : ''}`;
          let got: number[] | string;
          try {
            got = Array.from(decodeImage(png(w, h, depth, colorType, imageData(samples, depth, interlace === 1), [...extra], interlace)).data);
          } catch (e) {
            got = (e as Error).message;
          }
          t.same(got, samples.flat().flatMap(expect), name);
        }
      }
    }
  }
  const good = png(11, 9, 2, 0, imageData([...Array(9)].map(() => Array(11).fill(1)), 2, true), [], 1);
  const bad = good.slice();
  bad[bad.length - 20] ^= 1; // inside IDAT
  t.throws(() => decodeImage(bad), { message: 'PNG: CRC mismatch for chunk IDAT (corrupted file)' });
  const badFilter = imageData([[1, 2, 3], [3, 2, 1]], 2, true);
  badFilter[0] = 7;
  t.throws(() => decodeImage(png(3, 2, 2, 0, badFilter, [], 1)), { message: 'PNG: unknown filter type 7 in Adam7 pass 1 (corrupted file)' });
  // Passes 1, 4, 6 and 7 hold one row each: 4 × (filter byte + 1 byte) = 8 bytes.
  t.throws(() => decodeImage(png(3, 2, 2, 0, badFilter.subarray(0, 7), [], 1)), { message: 'PNG: image data has 7 bytes, 3 × 2 interlaced at 2 bits a pixel needs 8 (truncated or corrupted file)' });
  t.end();
});

t.test("three-channel JPEGs are YCbCr or RGB by libjpeg's rule: a JFIF marker, else an Adobe marker's transform, else ids 'R', 'G', 'B'", (t) => {
  // A smooth image that jpeg-js writes as JFIF with ids 1, 2, 3 and YCbCr planes (quality 100).
  const P = rgb(16, 16, (x, y) => [40 + 10 * x, 200 - 8 * y, 90 + 4 * (x + y)]);
  const rgba = new Uint8Array(16 * 16 * 4).map((_, i) => (i % 4 === 3 ? 255 : P[(i >> 2) * 3 + (i % 4)]));
  const written = new Uint8Array(jpeg.encode({ width: 16, height: 16, data: rgba }, 100).data);
  // The planes as stored: JFIF's YCbCr of each pixel (ITU-R BT.601, full range).
  const ycc = P.map((_, i) => {
    const [r, g, b] = P.subarray(i - (i % 3), i - (i % 3) + 3);
    return [0.299 * r + 0.587 * g + 0.114 * b, 128 - 0.168736 * r - 0.331264 * g + 0.5 * b, 128 + 0.5 * r - 0.418688 * g - 0.081312 * b][i % 3];
  });
  const segments = (b: Uint8Array) => {
    const out: { m: number; at: number; end: number }[] = [];
    for (let at = 2; b[at + 1] !== 0xda; at += 2 + ((b[at + 2] << 8) | b[at + 3])) out.push({ m: b[at + 1], at, end: at + 2 + ((b[at + 2] << 8) | b[at + 3]) });
    return out;
  };
  // `jfif` false drops the APP0 segment; `adobe` inserts an APP14 with that transform; `ids` renames the components (frame and scan headers).
  const variant = ({ jfif = true, adobe, ids }: { jfif?: boolean; adobe?: number; ids?: number[] }) => {
    const app0 = segments(written).find((s) => s.m === 0xe0)!;
    let b = jfif ? written.slice() : Uint8Array.from([...written.subarray(0, app0.at), ...written.subarray(app0.end)]);
    if (adobe !== undefined) b = Uint8Array.from([...b.subarray(0, 2), 0xff, 0xee, 0, 14, ...[...'Adobe'].map((c) => c.charCodeAt(0)), 0, 100, 0, 0, 0, 0, adobe, ...b.subarray(2)]);
    if (ids) {
      const segs = segments(b);
      const sof = segs.find((s) => s.m === 0xc0)!;
      const sos = segs[segs.length - 1].end; // FF DA, length, count, then (id, tables) per component
      ids.forEach((id, c) => {
        b[sof.at + 10 + 3 * c] = id;
        b[sos + 5 + 2 * c] = id;
      });
    }
    return b;
  };
  const worst = (got: Uint8Array, want: ArrayLike<number>) => got.reduce((m, v, i) => Math.max(m, Math.abs(v - want[i])), 0);
  const RGB_IDS = [0x52, 0x47, 0x42];
  const cases: [string, Uint8Array, ArrayLike<number>][] = [
    ['JFIF (as written)', written, P],
    ['JFIF, ids R, G, B (JFIF decides)', variant({ ids: RGB_IDS }), P],
    ['no JFIF, ids 1, 2, 3', variant({ jfif: false }), P],
    ['no JFIF, Adobe transform 1', variant({ jfif: false, adobe: 1 }), P],
    ['no JFIF, ids R, G, B: RGB samples', variant({ jfif: false, ids: RGB_IDS }), ycc],
    ['no JFIF, Adobe transform 0: RGB samples', variant({ jfif: false, adobe: 0 }), ycc],
    ['no JFIF, Adobe transform 1 beats ids R, G, B', variant({ jfif: false, adobe: 1, ids: RGB_IDS }), P],
  ];
  for (const [name, bytes, want] of cases) {
    const img = decodeImage(bytes);
    t.ok(worst(img.data, want) <= 3, `${name}: within 3 levels of the expected values (${worst(img.data, want)})`);
  }
  t.end();
});

t.test('classes and files are sorted by code point, as Python sorts them (torchvision\'s labels)', async (t) => {
  // UTF-16 order puts the emoji (a surrogate pair, 0xD83D…) before U+FF5A; code points put it after.
  const root = await mkdtemp(join(tmpdir(), 'difrep-order-'));
  const names = ['apple', '\u{FF5A}ebra', '\u{1F600}smile'];
  for (const c of names) {
    await mkdir(join(root, c));
    for (const f of ['\u{1F600}.png', '\u{FF5A}.png']) await writeFile(join(root, c, f), encodePng({ width: 2, height: 2, data: rgb(2, 2, () => [9, 9, 9]), channels: 3, depth: 8 }));
  }
  const f = await scanImageFolder(root);
  t.same(f.classes, names, 'classes: apple, ｚebra, 😀smile');
  t.same(f.files.slice(0, 2), [join(root, 'apple', '\u{FF5A}.png'), join(root, 'apple', '\u{1F600}.png')], 'files in code-point order');
  await rm(root, { recursive: true });
});

// fast-png refused these valid files ("tRNS chunk contains more alpha values than there are pixels
// (3 vs 1)"; a palette's alphas past its length); Pillow reads them, and convert('RGB') ignores the
// transparency, so their RGB is the colour data alone.
t.test('transparency chunks that fast-png refuses are read past: a 1×1 RGB key colour, palette alphas longer than the palette', async (t) => {
  // One pixel (30, 60, 90), filter byte 0; tRNS: the key colour (30, 60, 90) as three 16-bit samples.
  const rgbKey = png(1, 1, 8, 2, Uint8Array.of(0, 30, 60, 90), [chunk('tRNS', Uint8Array.of(0, 30, 0, 60, 0, 90))]);
  t.same(decodeImage(rgbKey), { width: 1, height: 1, data: Uint8Array.of(30, 60, 90) });
  // 2×1 palette of two colours, pixels [1, 0]; four alphas for two entries.
  const palette = png(2, 1, 8, 3, Uint8Array.of(0, 1, 0), [chunk('PLTE', Uint8Array.of(10, 20, 30, 200, 100, 50)), chunk('tRNS', Uint8Array.of(0, 128, 255, 7))]);
  t.same(decodeImage(palette), { width: 2, height: 1, data: Uint8Array.of(200, 100, 50, 10, 20, 30) });
});
