// An ImageFolder cache records its class list and a fingerprint of its files: a label is the class's
// place in its own folder's sorted list, so a test folder missing a class scored every later class
// against the wrong one (top-1 50 % for separable classes, 100 % on the training cache), and shards
// of a folder whose files changed between them were merged as one cache.
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encode } from 'fast-png';
import t from 'tap';
import { EXPERIMENT_COMMANDS } from '../../src/cli/experiments.ts';

const dir = await mkdtemp(join(tmpdir(), 'difrep-folder-provenance-'));
t.teardown(() => rm(dir, { recursive: true }));
const run = (command: string, ...args: string[]) => EXPERIMENT_COMMANDS[command](args);
const model = new URL('../../models/fmnist16.json', import.meta.url).pathname;

/** root/<class>/<i>.png: 16×16 grey images of one level per class (distinct per image). */
async function folder(root: string, classes: Record<string, number>, perClass: number): Promise<void> {
  for (const [name, level] of Object.entries(classes)) {
    await mkdir(join(root, name), { recursive: true });
    for (let i = 0; i < perClass; i++) await writeFile(join(root, name, `${i}.png`), encode({ width: 16, height: 16, data: new Uint8Array(256).fill(level + i), channels: 1, depth: 8 }));
  }
}

t.test('train, knn and sweep refuse a test folder with other classes, naming them', async (t) => {
  await folder(join(dir, 'tr'), { a: 20, b: 120, c: 220 }, 3);
  await folder(join(dir, 'te'), { a: 21, c: 221 }, 2);
  for (const split of ['tr', 'te']) t.equal(await run('extract', '--features', 'pixels', '--model', model, '--dataset', 'folder', '--root', join(dir, split), '--out', join(dir, `c-${split}`)), 0);
  const message = /number different classes \(only the training cache has b\): a label is the class's place in its own split's sorted list/;
  await t.rejects(run('knn', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te'), '--k', '1', '--classes', '3'), message);
  await t.rejects(run('train', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te'), '--classes', '3', '--epochs', '1', '--out', join(dir, 'run')), message);
  await t.rejects(run('sweep', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te'), '--classes', '3', '--epochs', '1', '--pool', '1', '--out', join(dir, 'sweep')), message);
  // The same classes in both folders: scored as before.
  await folder(join(dir, 'te3'), { a: 22, b: 122, c: 222 }, 1);
  t.equal(await run('extract', '--features', 'pixels', '--model', model, '--dataset', 'folder', '--root', join(dir, 'te3'), '--out', join(dir, 'c-te3')), 0);
  t.equal(await run('knn', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te3'), '--k', '1', '--classes', '3'), 0);
});

t.test('one folder spelled two ways is one dataset: scoring it against itself is warned about', async (t) => {
  const spelled = join(dir, 'tr', '..', 'tr') + '/';
  t.equal(await run('extract', '--features', 'pixels', '--model', model, '--dataset', 'folder', '--root', spelled, '--out', join(dir, 'c-tr-again')), 0);
  const warnings: string[] = [];
  const error = console.error;
  console.error = (line: string) => void warnings.push(line);
  try {
    t.equal(await run('knn', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-tr-again'), '--k', '1', '--classes', '3'), 0);
  } finally {
    console.error = error;
  }
  t.match(warnings.join('\n'), /both hold images of folder:.*\/tr: the test scores are on training images/);
  // A copy of the folder elsewhere: the same files (paths under the root, sizes).
  await cp(join(dir, 'tr'), join(dir, 'tr-copy'), { recursive: true });
  t.equal(await run('extract', '--features', 'pixels', '--model', model, '--dataset', 'folder', '--root', join(dir, 'tr-copy'), '--out', join(dir, 'c-tr-copy')), 0);
  warnings.length = 0;
  console.error = (line: string) => void warnings.push(line);
  try {
    t.equal(await run('knn', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-tr-copy'), '--k', '1', '--classes', '3'), 0);
  } finally {
    console.error = error;
  }
  t.match(warnings.join('\n'), /hold the same image files: the test scores are on training images/);
});

t.test('--per-class above what a class folder holds is warned about (the subset is then not balanced)', async (t) => {
  await folder(join(dir, 'short'), { a: 40, b: 140 }, 2);
  await mkdir(join(dir, 'short', 'a', 'more'));
  await writeFile(join(dir, 'short', 'a', 'more', 'x.png'), encode({ width: 16, height: 16, data: new Uint8Array(256).fill(7), channels: 1, depth: 8 }));
  const warnings: string[] = [];
  const error = console.error;
  console.error = (line: string) => void warnings.push(line);
  try {
    t.equal(await run('extract', '--features', 'pixels', '--model', model, '--dataset', 'folder', '--root', join(dir, 'short'), '--per-class', '3', '--out', join(dir, 'c-short')), 0);
  } finally {
    console.error = error;
  }
  t.match(warnings.join('\n'), /--per-class 3, but b has 2: the subset is not balanced \(5 images\)/);
});

t.test('a shard of a folder whose files changed since the other shard is refused, whatever their size', async (t) => {
  for (const [label, replacement] of [
    ['another size', encode({ width: 20, height: 20, data: new Uint8Array(400).fill(99), channels: 1, depth: 8 })],
    // Same dimensions and pixels of one value each: the same encoded length, other contents.
    ['the same size', encode({ width: 16, height: 16, data: new Uint8Array(256).fill(201), channels: 1, depth: 8 })],
  ] as const) {
    const root = join(dir, `sharded-${label.replace(/ /g, '-')}`);
    await folder(root, { a: 30, b: 130 }, 2);
    const out = join(dir, `c-sharded-${label.replace(/ /g, '-')}`);
    const extract = (shard: string) => run('extract', '--features', 'pixels', '--model', model, '--dataset', 'folder', '--root', root, '--chunk', '2', '--shard', shard, '--out', out);
    t.equal(await extract('0/2'), 0);
    const before = await readFile(join(root, 'b', '1.png'));
    await writeFile(join(root, 'b', '1.png'), replacement);
    if (label === 'the same size') t.equal(replacement.length, before.length, 'the replacement has the same byte length');
    await t.rejects(extract('1/2'), /already holds features from an extraction with other settings \(chunk-\S+: files \("contents-sha256:[0-9a-f]+\.\.\. → "contents-sha256:[0-9a-f]+\.\.\.\)\)/, `one image replaced by one of ${label}`);
  }
});

t.test('heads over a folder cache score its recorded classes; another --classes is refused', async (t) => {
  // c-tr and c-te3: classes a, b, c (the first test above).
  t.equal(await run('train', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te3'), '--pool', '1', '--epochs', '1', '--batch', '3', '--out', join(dir, 'three')), 0);
  const result = JSON.parse(await readFile(join(dir, 'three', 'result.json'), 'utf8'));
  t.equal(result.params, 3 * 3 + 3, 'a 3-way linear layer on 3 pooled values (a 10-way one has 40 parameters)');
  t.equal(await run('knn', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te3'), '--k', '1'), 0, 'knn without --classes');
  const refused = /--classes 10, but .*c-tr records 3 classes \(a, b, c\): leave out --classes/;
  await t.rejects(run('train', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te3'), '--classes', '10', '--epochs', '1', '--out', join(dir, 'ten')), refused);
  await t.rejects(run('knn', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te3'), '--k', '1', '--classes', '10'), refused);
  await t.rejects(run('sweep', '--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te3'), '--classes', '10', '--epochs', '1', '--pool', '1', '--out', join(dir, 'sw10')), refused);
});

t.test('train refuses options of another head, naming the heads they are for', async (t) => {
  const base = ['--train', join(dir, 'c-tr'), '--test', join(dir, 'c-te3'), '--epochs', '1', '--batch', '3'];
  await t.rejects(run('train', ...base, '--per-class', '10', '--out', join(dir, 'x1')), /--per-class \(for difeed\) is not for --head linear: leave it out/);
  await t.rejects(run('train', ...base, '--dim', '16', '--pre-pool', '2', '--out', join(dir, 'x2')), /--dim \(for attention, difformer, difeed\), --pre-pool \(for attention, difformer, difeed\) are not for --head linear: leave them out/);
  await t.rejects(run('train', ...base, '--head', 'attention', '--pool', '1', '--out', join(dir, 'x3')), /--pool \(for linear\) is not for --head attention/);
  await t.rejects(run('train', ...base, '--head', 'attention', '--standardize', '--out', join(dir, 'x4')), /--standardize \(for linear\) is not for --head attention/);
  await t.rejects(run('train', ...base, '--checkpoint', '/nonexistent', '--out', join(dir, 'x5')), /--checkpoint \(for difeed\) is not for --head linear/);
});

t.test('folder caches record their decoder and preprocessing; a cache of other x0s is not scored with them', async (t) => {
  const { openFeatureCache } = await import('../../src/train/extract.ts');
  const { checkSameExtraction } = await import('../../src/train/cached-features.ts');
  const { FOLDER_PREPROCESSING } = await import('../../src/train/data/preprocess.ts');
  const { signature } = await openFeatureCache(join(dir, 'c-tr'));
  t.equal(signature.preprocess, FOLDER_PREPROCESSING);
  // A cache extracted before the preprocessing was recorded (area averaging then).
  const { preprocess: _, ...older } = signature;
  t.throws(() => checkSameExtraction(signature, older as typeof signature, 'new', 'old'), /come from different extractions \(preprocess "center_crop_arr.*" against unset\)/);
  // A cache whose JPEGs jpeg-js decoded (before the decoder was recorded).
  const { FOLDER_DECODER } = await import('../../src/train/data/image-folder.ts');
  t.equal(signature.decoder, FOLDER_DECODER);
  const { decoder: __, ...jpegJs } = signature;
  t.throws(() => checkSameExtraction(signature, jpegJs as typeof signature, 'new', 'old'), /come from different extractions \(decoder "PNG fast-png; JPEG libjpeg-turbo.* against unset\)/);
});
