// A training state with a non-finite value, a wrong-shaped tensor or corrupt progress is refused
// before anything is restored: the parameters keep their values.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { CheckpointError } from '../../src/model/checkpoint/index.ts';
import { writeSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { loadTrainingState, saveTrainingState } from '../../src/train/checkpoint.ts';
import { Adam } from '../../src/train/optimizer.ts';
import { testEngine } from '../helpers/check.ts';
import { poke } from '../helpers/poke-safetensors.ts';

t.test('a training state holding NaN/Inf or inconsistent progress is refused, nothing restored', async (t) => {
  const e = await testEngine();
  const dir = await mkdtemp(join(tmpdir(), 'difrep-state-'));
  const params = (w: number[], b: number[]) => new Map([
    ['w', e.keep(e.tensor(Float32Array.from(w), [2, 3], 'w'))],
    ['b', e.keep(e.tensor(Float32Array.from(b), [2], 'b'))],
  ]);
  const saved = params([1, 2, 3, 4, 5, 6], [7, 8]);
  const adam = new Adam(e, saved, { lr: 0.1 });
  const good = join(dir, 'good.safetensors');
  await saveTrainingState(good, saved, adam, { epoch: 2, steps: 0 }, {});
  const bytes = await readFile(good);

  // The same state saved by hand with other progress metadata.
  const withProgress = async (file: string, progress: string) => {
    await writeSafetensors(join(dir, file), { 'param.w': { shape: [2, 3], data: new Float32Array(6) }, 'param.b': { shape: [2], data: new Float32Array(2) } },
      { kind: 'difrep-training-state', progress });
    return join(dir, file);
  };
  const cases: [string, RegExp | string][] = [];
  const add = async (file: string, data: Uint8Array, expected: RegExp | string) => {
    await writeFile(join(dir, file), data);
    cases.push([join(dir, file), expected]);
  };
  await add('nan-param.safetensors', poke(bytes, 'param.b', 1, NaN), 'tensor "param.b" holds NaN at index 1: the checkpoint is corrupt');
  await add('inf-param.safetensors', poke(bytes, 'param.w', 4, -Infinity), 'tensor "param.w" holds -Infinity at index 4: the checkpoint is corrupt');
  cases.push([await withProgress('bad-json.safetensors', '{"epoch": 1,'), 'progress metadata is not JSON']);
  cases.push([await withProgress('nan-epoch.safetensors', '{"epoch": null, "steps": 1, "optimizerSteps": 1}'), 'progress epoch is null, not a count']);
  cases.push([await withProgress('neg-steps.safetensors', '{"epoch": 1, "steps": -3, "optimizerSteps": 1}'), 'progress steps is -3, not a count']);
  cases.push([await withProgress('losses.safetensors', '{"epoch": 1, "steps": 1, "optimizerSteps": 1, "losses": "[0.5, null]"}'), 'progress losses is not a list of finite numbers']);
  cases.push([await withProgress('pair-losses.safetensors', '{"epoch": 1, "steps": 1, "optimizerSteps": 1, "losses": "[[1, 0.5], [2, null]]"}'), 'progress losses is not a list of finite numbers']);
  await writeSafetensors(join(dir, 'shape.safetensors'), { 'param.w': { shape: [3, 2], data: new Float32Array(6) }, 'param.b': { shape: [2], data: new Float32Array(2) } },
    { kind: 'difrep-training-state', progress: '{"epoch": 1, "steps": 1, "optimizerSteps": 1}' });
  cases.push([join(dir, 'shape.safetensors'), 'parameter w is [3,2] in the checkpoint, [2,3] in the model']);
  // Parameters and optimizer state that do not fit (besides w and b as they should be).
  const withTensors = async (file: string, extra: Record<string, number>) => {
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = { 'param.w': { shape: [2, 3], data: new Float32Array(6) }, 'param.b': { shape: [2], data: new Float32Array(2) } };
    for (const [k, n] of Object.entries(extra)) tensors[k] = { shape: [n], data: new Float32Array(n) };
    await writeSafetensors(join(dir, file), tensors, { kind: 'difrep-training-state', progress: '{"epoch": 1, "steps": 500, "optimizerSteps": 500}' });
    return join(dir, file);
  };
  cases.push([await withTensors('moment.safetensors', { 'optim.exp_avg.b': 3, 'optim.exp_avg_sq.b': 3 }), 'optimizer state does not fit: Adam exp_avg of b holds 3 values, its parameter [2] 2']);
  cases.push([await withTensors('half-pair.safetensors', { 'optim.exp_avg.b': 2 }), 'Adam state of b has exp_avg without exp_avg_sq']);
  cases.push([await withTensors('stray-moment.safetensors', { 'optim.exp_avg.b': 2, 'optim.exp_avg_sq.b': 2, 'optim.exp_avg_sq.zzz': 2 }), 'Adam state for no parameter of this model: exp_avg_sq.zzz']);
  cases.push([await withTensors('extra-param.safetensors', { 'param.extra.weight': 4 }), 'parameters the model does not have: extra.weight']);
  await writeSafetensors(join(dir, 'nan-moment.safetensors'), {
    'param.w': { shape: [2, 3], data: new Float32Array(6) }, 'param.b': { shape: [2], data: new Float32Array(2) },
    'optim.exp_avg_sq.w': { shape: [2, 3], data: Float32Array.from([0, 0, 0, 0, 0, NaN]) },
  }, { kind: 'difrep-training-state', progress: '{"epoch": 1, "steps": 1, "optimizerSteps": 1}' });
  cases.push([join(dir, 'nan-moment.safetensors'), 'tensor "optim.exp_avg_sq.w" holds NaN at index 5: the checkpoint is corrupt']);
  // Edited states that loaded: Adam restarted from zero moments under step 501's bias correction
  // (updates ~3× too large), moments under 0 steps, steps that disagree, a negative second moment
  // (NaN at the first step).
  cases.push([await withTensors('no-moments.safetensors', {}), 'its optimizer state does not fit: Adam state holds no moments after 500 steps']);
  cases.push([await withProgress('steps-differ.safetensors', '{"epoch": 1, "steps": 5, "optimizerSteps": 4}'), 'corrupt training checkpoint: progress records 5 steps but 4 optimizer steps']);
  await writeSafetensors(join(dir, 'zero-steps.safetensors'), {
    'param.w': { shape: [2, 3], data: new Float32Array(6) }, 'param.b': { shape: [2], data: new Float32Array(2) },
    'optim.exp_avg.b': { shape: [2], data: new Float32Array(2) }, 'optim.exp_avg_sq.b': { shape: [2], data: new Float32Array(2) },
  }, { kind: 'difrep-training-state', progress: '{"epoch": 0, "steps": 0, "optimizerSteps": 0}' });
  cases.push([join(dir, 'zero-steps.safetensors'), 'Adam state holds moments but records 0 steps taken']);
  await writeSafetensors(join(dir, 'negative-moment.safetensors'), {
    'param.w': { shape: [2, 3], data: new Float32Array(6) }, 'param.b': { shape: [2], data: new Float32Array(2) },
    'optim.exp_avg.w': { shape: [2, 3], data: new Float32Array(6) }, 'optim.exp_avg_sq.w': { shape: [2, 3], data: Float32Array.from([0, 1, -1e-9, 0, 0, 0]) },
  }, { kind: 'difrep-training-state', progress: '{"epoch": 1, "steps": 1, "optimizerSteps": 1}' });
  cases.push([join(dir, 'negative-moment.safetensors'), /Adam exp_avg_sq of w holds -9\.99\d*e-10 at 2; a second moment is at least 0/]);

  for (const [path, expected] of cases) {
    const target = params([10, 11, 12, 13, 14, 15], [20, 21]);
    const err = await loadTrainingState(e, path, target, new Adam(e, target, { lr: 0.1 })).then(() => null, (x: Error) => x);
    t.ok(err instanceof CheckpointError, `${path}: a CheckpointError (${err?.message})`);
    t.match(err?.message, expected);
    t.ok(err?.message.startsWith(`${path}: `), 'names the file');
    t.same(Array.from(await target.get('w')!.read()), [10, 11, 12, 13, 14, 15], 'parameters untouched');
    t.same(Array.from(await target.get('b')!.read()), [20, 21], 'parameters untouched');
  }

  // The untouched state still loads.
  const target = params([10, 11, 12, 13, 14, 15], [20, 21]);
  const progress = await loadTrainingState(e, good, target, new Adam(e, target, { lr: 0.1 }));
  t.equal(progress.epoch, 2);
  t.equal(progress.steps, 0);
  t.same(Array.from(await target.get('w')!.read()), [1, 2, 3, 4, 5, 6], 'restored');
  await rm(dir, { recursive: true });
});

t.test('a state holding NaN/Inf is not saved: the previous state on disk stays', async (t) => {
  const e = await testEngine();
  const dir = await mkdtemp(join(tmpdir(), 'difrep-state-save-'));
  const path = join(dir, 'state.safetensors');
  const params = new Map([['w', e.keep(e.tensor(Float32Array.from([1, 2, 3]), [3], 'w'))]]);
  const adam = new Adam(e, params, { lr: 0.1 });
  await saveTrainingState(path, params, adam, { epoch: 0, steps: 1 }, {});
  const before = await readFile(path);
  const cases: [string, () => Promise<void>, string][] = [
    ['a NaN parameter', async () => {
      const bad = new Map([['w', e.keep(e.tensor(Float32Array.from([1, NaN, 3]), [3], 'w'))]]);
      await saveTrainingState(path, bad, new Adam(e, bad, { lr: 0.1 }), { epoch: 1, steps: 2 }, {});
    }, `${path}: not saved at step 0: param.w holds NaN at index 1 (training diverged?); the previous state is unchanged`],
    ['an infinite progress value', () => saveTrainingState(path, params, adam, { epoch: 1, steps: 2, lr: Infinity }, {}),
      `${path}: not saved at step 0: progress lr is Infinity`],
    ['a NaN loss (null in JSON)', () => saveTrainingState(path, params, adam, { epoch: 1, steps: 2, losses: JSON.stringify([0.5, NaN]) }, {}),
      `${path}: not saved at step 0: the losses hold a non-finite value`],
    ['a NaN loss in [step, loss] pairs', () => saveTrainingState(path, params, adam, { epoch: 1, steps: 2, losses: JSON.stringify([[1, 0.5], [2, NaN]]) }, {}),
      `${path}: not saved at step 0: the losses hold a non-finite value`],
  ];
  for (const [what, save, message] of cases) {
    const err = await save().then(() => null, (x: Error) => x);
    t.match(err?.message, message, what);
    t.same(await readFile(path), before, `${what}: the previous state is unchanged`);
  }
  t.same(await readdir(dir), ['state.safetensors'], 'no temp files');
  // Finite [step, loss] pairs (pretraining) save and load.
  await saveTrainingState(path, params, adam, { epoch: 0, steps: 0, losses: JSON.stringify([[1, 0.5], [2, 0.25]]) }, {});
  const back = await loadTrainingState(e, path, params, adam);
  t.equal(back.losses, '[[1,0.5],[2,0.25]]');
  await rm(dir, { recursive: true });
});
