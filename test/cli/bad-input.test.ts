// Every bad option is refused before anything runs or is created, with one line naming the option,
// what it got and what it accepts (issue 14's cases, as a table).
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { UsageError } from '../../src/cli/args.ts';
import { EXPERIMENT_COMMANDS } from '../../src/cli/experiments.ts';
import { GENERATIVE_COMMANDS } from '../../src/cli/generative.ts';

const COMMANDS = { ...EXPERIMENT_COMMANDS, ...GENERATIVE_COMMANDS };
const dir = await mkdtemp(join(tmpdir(), 'difrep-bad-input-'));
const out = join(dir, 'out');
const aFile = join(dir, 'a-file');
await writeFile(aFile, 'not a folder');
// The shipped model's config with one input channel: images go in as three.
const oneChannel = join(dir, 'one-channel.json');
const shipped = JSON.parse(await readFile(new URL('../../models/fmnist16.json', import.meta.url), 'utf8'));
await writeFile(oneChannel, JSON.stringify({ ...shipped, in_channels: 1 }));
const fourChannels = join(dir, 'four-channels.json');
await writeFile(fourChannels, JSON.stringify({ ...shipped, in_channels: 4 }));
t.teardown(() => rm(dir, { recursive: true }));

const CASES: [string, string[], RegExp][] = [
  ['train', ['--lr', 'abc'], /--lr must be a number > 0 and ≤ 10, got "abc"/],
  ['train', ['--lr', '-1'], /--lr must be a number > 0 and ≤ 10, got "-1"/],
  ['train', ['--lr', '0'], /--lr must be a number > 0/],
  ['train', ['--gamma', 'abc'], /--gamma must be a number > 0 and ≤ 1, got "abc"/],
  ['train', ['--optimizer', 'adamw'], /--optimizer must be one of adam, sgd, got "adamw"/],
  ['train', ['--head', 'mlp'], /--head must be one of linear, attention, difformer, difeed, got "mlp"/],
  ['train', ['--epochs', '2.5'], /--epochs must be an integer ≥ 1/],
  ['train', ['--flip', 'yes'], /--flip must be one of true, false/],
  ['train', ['--resume=1'], /--resume' does not take an argument/],
  ['train', ['--train', 'a', '--test', 'b', '--b', '9', '--t', '90,150'], /a linear probe reads one t and one b/],
  ['knn', ['--train', 'a', '--test', 'b', '--k', '0'], /each value of --k must be an integer ≥ 1 and ≤ 100000, got "0"/],
  ['knn', ['--train', 'a', '--test', 'b', '--temperature', '0'], /--temperature must be a number > 0/],
  ['knn', ['--train', 'a', '--test', 'b', '--k', '20,20'], /--k lists 20 twice/],
  ['extract', ['--t', '150,'], /each value of --t must be an integer ≥ 0 and ≤ 999, got "" in "150,"/],
  ['extract', ['--t='], /--t needs a comma-separated list, got an empty string/],
  ['extract', ['--t', '1000'], /--t must be an integer ≥ 0 and ≤ 999, got "1000"/],
  ['extract', ['--t', '150,150'], /--t lists 150 twice \("150,150"\); give each value once/],
  ['extract', ['--b', '9,9'], /--b lists 9 twice/],
  ['extract', ['--per-class='], /--per-class must be an integer ≥ 0 and ≤ 10000000, got ""/],
  ['extract', ['--split', 'val'], /--split must be one of train, test/],
  ['extract', ['--dataset', 'folder', '--root', 'x', '--split', 'test'], /--split picks a Fashion-MNIST split; an image folder is one split/],
  // Number() reads hexadecimal, binary and octal: --epochs 0x1c trained 28 epochs.
  ['train', ['--epochs', '0x1c'], /--epochs must be an integer ≥ 1 and ≤ 100000, got "0x1c"/],
  ['train', ['--epochs', '1e1'], /--epochs must be an integer ≥ 1 and ≤ 100000, got "1e1"/],
  ['train', ['--lr', '0x1'], /--lr must be a number > 0 and ≤ 10, got "0x1"/],
  ['train', ['--lr', '0b1'], /--lr must be a number > 0 and ≤ 10, got "0b1"/],
  ['extract', ['--dataset', 'folder'], /--dataset folder needs --root DIR/],
  ['extract', ['--batch', '0'], /--batch must be an integer ≥ 1/],
  ['extract', ['--chunk', '-4'], /--chunk must be an integer ≥ 1/],
  ['extract', ['--nope', '1'], /unknown option --nope/],
  ['extract', ['stray'], /unexpected argument "stray"/],
  ['cka', ['--features', 'a', '--b', '5,9', '--t', '90,150'], /compare several blocks at one t, or several t at one block/],
  ['cka', ['--features', 'a', '--t', '90'], /difrep cka: give the blocks to compare \(--b 6,12,18,24,…\), or several timesteps/],
  ['sweep', ['--train', 'a', '--test', 'b', '--b', '9', '--pool', '0'], /each value of --pool must be an integer ≥ 1/],
  ['pretrain', ['--ema', '1.5'], /--ema must be a number ≥ 0 and ≤ 1, got "1.5"/],
  ['pretrain', ['--steps', '0'], /--steps must be an integer ≥ 1/],
  ['sample', ['--ddim-steps', '5000'], /--ddim-steps must be an integer ≥ 0 and ≤ 1000, got "5000"/],
  ['sample', ['--ddim-steps', '1'], /^difrep sample: --ddim-steps must be 0 \(DDPM ancestral sampling over all 1000 steps\) or an integer from 2 to 1000 .*got 1$/],
  ['sample', ['--count', '0'], /--count must be an integer ≥ 1/],
  // Output files are checked before any work (sample found a missing folder after its last step).
  ['sample', ['--count', '1', '--out', join(dir, 'nodir', 'x.png')], /--out .*nodir\/x\.png: the folder .*nodir does not exist; create it first/],
  ['sample', ['--out', dir], /--out .* is a folder: give a file name/],
  // A file where a folder of the path should be was called a folder that does not exist.
  ['sample', ['--count', '1', '--out', join(aFile, 'x.png')], /--out .*a-file\/x\.png: .*a-file is a file, not a folder$/],
  ['sample', ['--count', '1', '--out', join(aFile, 'sub', 'x.png')], /--out .*a-file\/sub\/x\.png: .*a-file is a file, not a folder$/],
  ['pretrain', ['--out', join(aFile, 'run', 'deeper')], /--out .*a-file\/run\/deeper cannot be created: .*a-file is a file, not a folder$/],
  // extract found these after loading its model (a raw ENOTDIR/EACCES); sample wrote a PNG under any name.
  ['extract', ['--out', aFile], /^difrep extract: --out .*a-file is a file; it names a folder/],
  ['extract', ['--out', join(aFile, 'feats')], /^difrep extract: --out .*a-file\/feats cannot be created: .*a-file is a file, not a folder$/],
  ['sample', ['--count', '1', '--out', join(dir, 'notes.txt')], /^difrep sample: --out .*notes\.txt: the sample grid is written as a PNG; give a file name ending in \.png$/],
  ['knn', ['--train', 'a', '--test', 'b', '--out', join(dir, 'nodir', 'k.json')], /difrep knn: --out .*: the folder .*nodir does not exist/],
  ['cka', ['--features', 'a', '--b', '5', '--out', join(dir, 'nodir', 'c.json')], /difrep cka: --out .*: the folder .*nodir does not exist/],
  ['cka', ['--features', 'a', '--b', '5', '--out', join(dir, 'c.json'), '--png', join(dir, 'nodir', 'c.png')], /difrep cka: --png .*: the folder .*nodir does not exist/],
  ['eval', ['--run', dir, '--features', 'b', '--png', join(dir, 'nodir', 'c.png')], /difrep eval: --png .*: the folder .*nodir does not exist/],
  ['cka', ['--features', 'a', '--b', '5', '--out', join(dir, 'c.json'), '--png', join(dir, 'c.jpg')], /difrep cka: --png .*c\.jpg: a chart is written as a PNG and an SVG beside it; give a name ending in \.png \(not \.jpg\)/],
  // A repeated option kept only its last value: --t 90 --t 150 extracted t 150 alone.
  ['extract', ['--t', '90', '--t', '150'], /--t is given 2 times \("90", "150"\); give it once \(a list takes commas: --t 90,150\)/],
  ['pretrain', ['--steps', '3', '--steps', '7', '--out', 'x'], /--steps is given 2 times \("3", "7"\); give it once$/m],
  // A forgotten value: Node's parser called it "ambiguous" and its hint was cut off.
  ['knn', ['--train', 'a', '--test', 'b', '--out', '--standardize'], /^difrep knn: --out needs a value, but the next argument is "--standardize", which starts with a dash \(a forgotten value\?\); give a value that starts with one as --out=--standardize$/],
  // More images per class than the split holds gave a smaller subset, silently.
  ['extract', ['--split', 'test', '--per-class', '1001'], /^difrep extract: --per-class 1001, but Fashion-MNIST's test split holds 1000 images of each class: give at most 1000, or 0 for the whole split$/],
  ['train', ['--head', 'difeed', '--test-per-class', '1001'], /^difrep train: --test-per-class 1001, but Fashion-MNIST's test split holds 1000 images of each class: give at most 1000$/],
  ['train', ['--head', 'difeed', '--per-class', '6001'], /^difrep train: --per-class 6001, but Fashion-MNIST's train split holds 6000 images of each class: give at most 6000$/],
  // A model of other than 3 input channels failed after loading, on the U-Net's input shape.
  ['extract', ['--model', oneChannel], /^difrep extract: it feeds images as 3 channels .*, but --model .*one-channel\.json has in_channels 1: give a config with in_channels 3$/],
  ['train', ['--head', 'difeed', '--model', oneChannel], /^difrep train: it feeds images as 3 channels .*has in_channels 1/],
  // sample drew 2 and 4 channels as RGB (channel 1 as green and blue; channel 3 dropped).
  ['sample', ['--model', fourChannels, '--count', '1', '--out', join(dir, 's.png')], /^difrep sample: --model .*four-channels\.json has in_channels 4; the sample grid is a picture of 1 \(grey\) or 3 \(RGB\) channels$/],
];

for (const [command, args, expected] of CASES) {
  t.test(`${command} ${args.join(' ')}`, async (t) => {
    const withOut = args.includes('--out') ? args : [...args, '--out', out];
    const err = await COMMANDS[command](withOut).then(() => null, (e: Error) => e);
    t.type(err, UsageError, 'a usage error, not a crash');
    t.match(err?.message, expected);
    t.notOk(err?.message.includes('\n'), 'one line');
    t.notOk(existsSync(out), '--out was not created');
  });
}

t.test('an output never replaces or writes into what the command reads', async (t) => {
  const base = join(dir, 'kept');
  const cache = join(base, 'cache');
  const run = join(base, 'run');
  const weights = join(base, 'weights.safetensors');
  await mkdir(cache, { recursive: true });
  await mkdir(run);
  await writeFile(weights, 'weights');
  await writeFile(join(run, 'state.safetensors'), 'head');
  await symlink(weights, join(base, 'alias.safetensors'));
  const refused: [string, string[], RegExp][] = [
    ['sample', ['--checkpoint', weights, '--count', '1', '--out', weights], /--out .*weights\.safetensors is the U-Net weights --checkpoint reads .*choose another path/],
    ['sample', ['--checkpoint', weights, '--count', '1', '--out', join(base, 'alias.safetensors')], /is the U-Net weights --checkpoint reads/],
    ['knn', ['--train', cache, '--test', cache, '--out', join(cache, 'chunk-0-8.safetensors')], /--out .* lies inside the training feature cache --train reads .*write it elsewhere/],
    ['cka', ['--features', cache, '--b', '5', '--out', join(base, 'm.svg'), '--png', join(base, 'm.png')], /--png .*m\.svg is the matrix JSON --out names/],
    ['eval', ['--run', run, '--features', cache, '--out', join(run, 'state.safetensors')], /--out .* is the trained head in --run/],
    ['eval', ['--run', run, '--features', cache, '--out', join(run, 'result.json')], /is the training result in --run/],
    ['train', ['--train', cache, '--test', cache, '--b', '9', '--out', join(cache, 'run')], /--out .* lies inside the training feature cache --train reads/],
    ['sweep', ['--train', cache, '--test', cache, '--b', '9', '--out', cache], /--out .* is the training feature cache --train reads/],
    ['train', ['--train', cache, '--test', cache, '--b', '9', '--out', weights], /--out .*weights\.safetensors is a file; it names a folder/],
    ['pretrain', ['--checkpoint', join(run, 'state.safetensors'), '--out', run], /--out .*state\.safetensors is the starting weights --checkpoint reads/],
    // The cache became a class folder of the dataset it was extracted from.
    ['extract', ['--dataset', 'folder', '--root', base, '--out', join(base, 'feats')], /--out .*feats lies inside the image folder of --root .*write it elsewhere/],
  ];
  for (const [command, args, expected] of refused) {
    const err = await COMMANDS[command](args).then(() => null, (e: Error) => e);
    t.type(err, UsageError, `${command}: a usage error`);
    t.match(err?.message, expected, `${command} ${args.join(' ')}`);
  }
  t.equal(await readFile(weights, 'utf8'), 'weights', 'the weights are untouched');
  t.equal(await readFile(join(run, 'state.safetensors'), 'utf8'), 'head', 'the head is untouched');
});

t.test('a missing feature cache is named', async (t) => {
  const err = await COMMANDS.train(['--train', join(dir, 'none'), '--test', join(dir, 'none'), '--b', '9', '--out', out]).then(() => null, (e: Error) => e);
  t.match(err?.message, /feature cache .*none does not exist/);
  t.notOk(existsSync(out), '--out was not created');
});

t.test('required options are named with what they are for', async (t) => {
  const err = await COMMANDS.train(['--head', 'linear']).then(() => null, (e: Error) => e);
  t.match(err?.message, /difrep train: --out DIR is required \(output directory/);
});

// The screenshot path was written only after the build and the page's run (up to 15 minutes): a
// missing folder failed at the end, and the weights' own path would have been replaced by a PNG.
t.test('example --screenshot checks its file before any work', async (t) => {
  const { exampleCommand } = await import('../../src/cli/example.ts');
  await t.rejects(exampleCommand(['--screenshot', join(dir, 'no', 'such', 'shot.png')]), { name: 'UsageError', message: /difrep example: --screenshot .*no.* does not exist/ });
  const weights = join(dir, 'weights.safetensors');
  await writeFile(weights, 'x');
  await t.rejects(exampleCommand(['--checkpoint', weights, '--screenshot', weights]), { name: 'UsageError', message: /--screenshot .*weights\.safetensors .*the weights --checkpoint serves/ });
  t.equal((await readFile(weights, 'utf8')), 'x', 'the weights are untouched');
  // The page reads safetensors only: a .pt was served and failed in the page ("header length 578712552184433500").
  const pt = new URL('../fixtures/adm32-mini.pt', import.meta.url).pathname;
  await t.rejects(exampleCommand(['--checkpoint', pt, '--screenshot', join(dir, 'shot.png')]), { name: 'UsageError', message: /difrep example: .*adm32-mini\.pt is not a safetensors file \(the page reads safetensors only\)/ });
});
