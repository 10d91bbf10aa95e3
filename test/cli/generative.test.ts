// difrep pretrain → sample, as a user runs them (a few steps of a tiny config).
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decode } from 'fast-png';
import t from 'tap';

const run = promisify(execFile);
const main = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const difrep = (...args: string[]) => run(process.execPath, ['--import', 'tsx', main, ...args], { encoding: 'utf8', maxBuffer: 1 << 24 });

t.test('pretrain writes a resumable state and an EMA state dict that sample loads', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-gen-'));
  const config = join(dir, 'tiny.json');
  await writeFile(config, JSON.stringify({
    image_size: 16, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '2',
    num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
  }));
  const { stdout, stderr } = await difrep('pretrain', '--model', config, '--steps', '2', '--batch', '4', '--images', '64', '--out', join(dir, 'run'));
  t.match(stdout, /pretrained to step 2/);
  const { readdir } = await import('node:fs/promises');
  t.notOk((await readdir(join(dir, 'run'))).includes('.lock-run'), 'the run lock is released');
  // A second run into a folder a live run holds is refused, naming it: two runs into one --out
  // each saved over the other's state, and both reported success.
  const { lockRunFolder } = await import('../../src/train/cache-lock.ts');
  const held = await lockRunFolder(join(dir, 'run'), () => {});
  const busy = await difrep('pretrain', '--model', config, '--steps', '3', '--batch', '4', '--images', '64', '--out', join(dir, 'run'), '--resume').then(
    () => ({ stderr: 'exit 0' }), (err: { stderr: string }) => err);
  t.match(busy.stderr, new RegExp(`run is being trained into by process ${process.pid} on .*; wait for it to finish or use another --out directory`));
  await held.release();
  // 0.9999² of the export is the starting weights.
  t.match(stderr, /warning: with --ema 0\.9999 over 2 steps, 100 % of ema\.safetensors \(and of the samples\) is still the starting weights; give more --steps/);
  const { stdout: more } = await difrep('pretrain', '--model', config, '--steps', '3', '--batch', '4', '--images', '64', '--out', join(dir, 'run'), '--resume');
  t.match(more, /--resume: continuing .*state\.safetensors after 2 steps\n/, 'says which state continues');
  t.match(more, /pretrained to step 3/);
  // A resume its settings refuse says nothing of continuing: the line came before the check.
  const refused = await difrep('pretrain', '--model', config, '--steps', '4', '--batch', '4', '--lr', '0.5', '--images', '64', '--out', join(dir, 'run'), '--resume').then(
    () => ({ stdout: 'exit 0', stderr: '' }), (err: { stdout: string; stderr: string }) => err);
  t.match(refused.stderr, /cannot resume .*state\.safetensors: it was started with other settings \(lr 0\.0001 there, 0\.5 now\)/);
  t.notMatch(refused.stdout, /continuing/, 'no "continuing" before the refusal');
  // --resume where nothing was saved yet (a restarted job before its first save, or a mistyped --out) starts anew, saying so.
  const { stdout: fresh } = await difrep('pretrain', '--model', config, '--steps', '1', '--batch', '4', '--images', '64', '--out', join(dir, 'other'), '--resume');
  t.match(fresh, /--resume: no training state at .*other.state\.safetensors yet \(nothing was saved before the last run stopped, or another --out\): starting a new run/);
  t.match(fresh, /pretrained to step 1/);
  t.equal(JSON.parse(await readFile(join(dir, 'run', 'loss.json'), 'utf8')).at(-1)[0], 3);
  t.match(await readFile(join(dir, 'run', 'loss.svg'), 'utf8'), /class="loss"[^>]* points="[\d.]+,[\d.]+ [\d.]+,[\d.]+"/, 'the loss chart, one point per logged step');
  t.ok(decode(await readFile(join(dir, 'run', 'loss.png'))).width > 0);
  const { stdout: s } = await difrep('sample', '--model', config, '--checkpoint', join(dir, 'run', 'ema.safetensors'), '--count', '4', '--ddim-steps', '3', '--out', join(dir, 'grid.png'));
  t.match(s, /wrote 4 samples \(DDIM 3 steps\)/);
  const png = decode(await readFile(join(dir, 'grid.png')));
  t.equal(png.width, 2 * 18 + 2);
  await rm(dir, { recursive: true });
});
