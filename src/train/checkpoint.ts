// Training state on disk: parameters, optimizer moments, counters and the run's settings in one
// safetensors file, written atomically, so a run resumes exactly where it stopped — and only with
// the settings it was started with.
import { access } from 'node:fs/promises';
import type { Engine } from '../engine/engine.ts';
import type { Tensor } from '../engine/tensor.ts';
import { unwritableReason } from '../model/checkpoint/atomic-write.ts';
import { CheckpointError } from '../model/checkpoint/checkpoint-error.ts';
import { openSafetensors, writeSafetensors } from '../model/checkpoint/safetensors.ts';
import { firstNonFinite, readFinite } from '../model/checkpoint/tensor-source.ts';
import { TRAINING_STATE_KIND } from '../model/state-dict.ts';
import { NonFiniteError } from './finite.ts';
import { type Optimizer, OptimizerStateError } from './optimizer.ts';

export interface TrainingProgress {
  epoch: number;
  /** Optimizer steps taken so far. */
  steps: number;
  [key: string]: number | string;
}

/** Where a state saved within an epoch stopped: batches of the epoch trained, their loss sum (Σ loss × images) and correct predictions. */
export interface PartialEpoch {
  batch: number;
  lossSum: number;
  correct: number;
}

/**
 * The partial epoch a state saved within an epoch records (progress batch, epochLoss and
 * epochCorrect; the last absent from DifFeed's), or undefined for one saved at an epoch's end. A
 * batch count at or past the epoch's `batchesPerEpoch` would skip the epoch unseen: refused.
 */
export function savedPartialEpoch(progress: TrainingProgress | undefined, path: string, batchesPerEpoch: number): PartialEpoch | undefined {
  if (progress?.batch === undefined) return undefined;
  const partial = { batch: Number(progress.batch), lossSum: Number(progress.epochLoss), correct: Number(progress.epochCorrect ?? 0) };
  const count = (v: number) => Number.isSafeInteger(v) && v >= 0;
  const bad = [
    ...(count(partial.batch) && partial.batch > 0 ? [] : [`batch ${JSON.stringify(progress.batch)} is not a count of batches`]),
    ...(Number.isFinite(partial.lossSum) && partial.lossSum >= 0 ? [] : [`epochLoss ${JSON.stringify(progress.epochLoss)} is not a finite sum`]),
    ...(count(partial.correct) ? [] : [`epochCorrect ${JSON.stringify(progress.epochCorrect)} is not a count`]),
  ];
  if (bad.length) throw new CheckpointError(path, `corrupt training checkpoint: its progress ${bad.join(', ')}`);
  if (partial.batch >= batchesPerEpoch) {
    throw new CheckpointError(path, `corrupt training checkpoint: saved within epoch ${progress.epoch + 1} after batch ${partial.batch}, but the epoch has ${batchesPerEpoch} batches`);
  }
  return partial;
}

/**
 * A count saved beside the parameters as an I64 scalar, as PyTorch saves it (BatchNorm's
 * num_batches_tracked): read when the state is written, set when it is restored.
 */
export interface SavedCount {
  get(): number;
  set(value: number): void;
}

/** What a run was started with (optimizer, learning rate, batch, seed, …): JSON values. */
export type RunSettings = Record<string, unknown>;

/** Whether `v` is a finite number or a (nested) list of them. */
function onlyFiniteNumbers(v: unknown): boolean {
  return Array.isArray(v) ? v.every(onlyFiniteNumbers) : Number.isFinite(v);
}

/**
 * Writes the state atomically. A NaN or ±Inf anywhere (a diverged run) refuses the save, so the
 * previous state on disk stays the last good one.
 */
export async function saveTrainingState(
  path: string, params: Map<string, Tensor>, optimizer: Optimizer, progress: TrainingProgress, settings: RunSettings, counts = new Map<string, SavedCount>(),
): Promise<void> {
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, p] of params) tensors[`param.${k}`] = { shape: [...p.shape], data: await p.read() };
  for (const [k, t] of optimizer.state()) tensors[`optim.${k}`] = { shape: [...t.shape], data: await t.read() };
  const notSaved = (what: string) => new NonFiniteError(`${path}: not saved at step ${optimizer.steps}: ${what} (training diverged?); the previous state is unchanged`);
  for (const [k, { data }] of Object.entries(tensors)) {
    const i = firstNonFinite(data);
    if (i >= 0) throw notSaved(`${k} holds ${data[i]} at index ${i}`);
  }
  const countTensors = Object.fromEntries([...counts].map(([k, c]) => [`param.${k}`, { shape: [], data: BigInt64Array.of(BigInt(c.get())) }]));
  for (const [k, v] of Object.entries(progress)) {
    if (typeof v === 'number' && !Number.isFinite(v)) throw notSaved(`progress ${k} is ${v}`);
  }
  // Losses arrive as JSON (a list of losses or of [step, loss]), where a NaN has become null.
  if (typeof progress.losses === 'string' && !onlyFiniteNumbers(JSON.parse(progress.losses))) throw notSaved('the losses hold a non-finite value');
  const metadata = { kind: TRAINING_STATE_KIND, progress: JSON.stringify({ ...progress, optimizerSteps: optimizer.steps }), settings: JSON.stringify(settings) };
  await writeSafetensors(path, { ...tensors, ...countTensors }, metadata);
}

const exists = (path: string) => access(path).then(() => true, () => false);
const show = (v: unknown) => (v === undefined ? 'unset' : JSON.stringify(v));

/** JSON with every object's keys sorted: a config typed in another key order is the same setting. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`).join(',')}}`;
  return JSON.stringify(v) ?? 'undefined';
}

/**
 * Whether `path` is to be resumed. An existing state without `resume` is refused (it would be
 * replaced); with `resume`, every setting must equal the one the state was started with.
 */
export async function prepareResume(path: string, resume: boolean, settings: RunSettings): Promise<boolean> {
  if (!(await exists(path))) return false;
  const src = await openSafetensors(path);
  const metadata = src.metadata;
  await src.close();
  const { kind, progress } = metadata;
  if (kind !== TRAINING_STATE_KIND) throw new Error(`${path} is not a difrep training state; choose another --out`);
  const done = JSON.parse(progress ?? '{}') as Partial<TrainingProgress>;
  if (!resume) throw new Error(`${path} already holds a training state (${done.steps ?? '?'} steps taken): pass --resume to continue that run, or choose another --out (or delete it)`);
  const differ = settingDifferences(readRunSettings(path, metadata), settings);
  if (differ.length) {
    throw new Error(`cannot resume ${path}: it was started with other settings (${differ.join('; ')}); rerun with the run's own options, or choose another --out`);
  }
  return true;
}

const isPlainObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);

/**
 * "key X there, Y now" for each setting that differs, descending into objects so a nested change
 * names its own path (data.train), not two whole objects of a kilobyte each.
 */
function settingDifferences(before: Record<string, unknown>, now: Record<string, unknown>, prefix = ''): string[] {
  return [...new Set([...Object.keys(before), ...Object.keys(now)])].flatMap((k) => {
    if (canonicalJson(before[k]) === canonicalJson(now[k])) return [];
    if (isPlainObject(before[k]) && isPlainObject(now[k])) return settingDifferences(before[k], now[k], `${prefix}${k}.`);
    return [`${prefix}${k} ${show(before[k])} there, ${show(now[k])} now`];
  });
}

/** The settings a training state was started with (its `settings` metadata). */
export function readRunSettings(path: string, metadata: Record<string, string>): RunSettings {
  if (metadata.settings === undefined) throw new CheckpointError(path, 'records no run settings (written by an older difrep, or not a training state)');
  try {
    const settings = JSON.parse(metadata.settings);
    if (settings && typeof settings === 'object' && !Array.isArray(settings)) return settings as RunSettings;
  } catch {
    // reported below
  }
  throw new CheckpointError(path, 'corrupt training state: its settings metadata is not a JSON object');
}

/** The metadata of the training state at `path`, refused when the file is no training state. */
async function readStateMetadata(path: string): Promise<Record<string, string>> {
  const src = await openSafetensors(path);
  try {
    if (src.metadata.kind !== TRAINING_STATE_KIND) throw new CheckpointError(path, 'not a difrep training state');
    return src.metadata;
  } finally {
    await src.close();
  }
}

/** The settings recorded in the training state at `path`. */
export async function readStateSettings(path: string): Promise<RunSettings> {
  return readRunSettings(path, await readStateMetadata(path));
}

/**
 * How far the run that saved the state at `path` had trained: whole epochs, the batches of the next
 * one for a state saved within an epoch (0 for one saved at an epoch's end), and optimizer steps.
 */
export async function readStateProgress(path: string): Promise<{ epochs: number; batches: number; steps: number }> {
  const p = parseProgress(path, (await readStateMetadata(path)).progress);
  return p.batch === undefined ? { epochs: p.epoch + 1, batches: 0, steps: p.steps } : { epochs: p.epoch, batches: Number(p.batch), steps: p.steps };
}

/** The settings of the training state at `path`, or undefined when none is saved there. */
export async function savedStateSettings(path: string): Promise<RunSettings | undefined> {
  return (await exists(path)) ? readStateSettings(path) : undefined;
}

/** Progress as saved, or why it cannot be trusted. */
function parseProgress(path: string, json: string | undefined): TrainingProgress & { optimizerSteps: number } {
  let progress: unknown;
  try {
    progress = JSON.parse(json ?? '');
  } catch {
    throw new CheckpointError(path, 'corrupt training checkpoint: its progress metadata is not JSON');
  }
  const p = progress as TrainingProgress & { optimizerSteps: number };
  for (const k of ['epoch', 'steps', 'optimizerSteps'] as const) {
    if (!Number.isSafeInteger(p?.[k]) || p[k] < 0) throw new CheckpointError(path, `corrupt training checkpoint: progress ${k} is ${JSON.stringify(p?.[k])}, not a count`);
  }
  // Both count the optimizer's steps (one per batch); a state whose two differ was edited.
  if (p.steps !== p.optimizerSteps) throw new CheckpointError(path, `corrupt training checkpoint: progress records ${p.steps} steps but ${p.optimizerSteps} optimizer steps`);
  if (p.losses !== undefined) {
    let losses: unknown;
    try {
      losses = JSON.parse(String(p.losses));
    } catch {
      losses = undefined;
    }
    if (!Array.isArray(losses) || !onlyFiniteNumbers(losses)) throw new CheckpointError(path, 'corrupt training checkpoint: progress losses is not a list of finite numbers');
  }
  return p;
}

/**
 * Restores parameters (in place), counts and optimizer state; returns the saved progress. A tensor
 * of the wrong shape or holding NaN/±Inf, or a count that is not one, refuses the whole load
 * (CheckpointError naming file and tensor). A count the state lacks (saved before it was kept) stays.
 */
export async function loadTrainingState(e: Engine, path: string, params: Map<string, Tensor>, optimizer: Optimizer, counts = new Map<string, SavedCount>()): Promise<TrainingProgress> {
  const src = await openSafetensors(path);
  try {
    if (src.metadata.kind !== TRAINING_STATE_KIND) throw new CheckpointError(path, 'not a difrep training checkpoint');
    const progress = parseProgress(path, src.metadata.progress);
    // Read and check everything before anything is written, so a refused load changes nothing.
    const values = new Map<Tensor, Float32Array>();
    for (const [k, p] of params) {
      const key = `param.${k}`;
      const info = src.info(key);
      if (!info) throw new CheckpointError(path, `parameter ${k} is missing; the checkpoint belongs to another model`);
      if (info.shape.join() !== p.shape.join()) throw new CheckpointError(path, `parameter ${k} is [${info.shape}] in the checkpoint, [${p.shape}] in the model`);
      values.set(p, await readFinite(src, key));
    }
    const countValues = new Map<SavedCount, number>();
    for (const [k, c] of counts) {
      const key = `param.${k}`;
      if (!src.info(key)) continue;
      const data = await src.read(key);
      if (data.length !== 1 || !Number.isSafeInteger(data[0]) || data[0] < 0) throw new CheckpointError(path, `${k} is not one count ≥ 0 (${data.length} values, the first ${data[0]})`);
      countValues.set(c, data[0]);
    }
    const unexpected = src.keys().filter((k) => k.startsWith('param.') && !params.has(k.slice(6)) && !counts.has(k.slice(6)));
    if (unexpected.length) throw new CheckpointError(path, `parameters the model does not have: ${unexpected.slice(0, 5).map((k) => k.slice(6)).join(', ')}${unexpected.length > 5 ? ', …' : ''}; the checkpoint belongs to another model`);
    const state = new Map<string, Float32Array>();
    for (const k of src.keys()) if (k.startsWith('optim.')) state.set(k.slice(6), await readFinite(src, k));
    try {
      optimizer.checkState(state, progress.optimizerSteps);
    } catch (err) {
      if (err instanceof OptimizerStateError) throw new CheckpointError(path, `its optimizer state does not fit: ${err.message}`);
      throw err;
    }
    for (const [p, data] of values) {
      e.writeBuffer(p.buffer, 0, data);
      p.markWritten();
    }
    for (const [c, value] of countValues) c.set(value);
    optimizer.loadState(progress.optimizerSteps, state);
    return progress;
  } finally {
    await src.close();
  }
}

/**
 * A fresh start (undefined) or the progress of the resumed state at `path`, whose parameters and
 * optimizer moments are then loaded; `prepareResume`'s checks come first. With `resume`, `announce`
 * gets the line a command prints once those checks pass: which state continues after how many
 * steps, or that none is saved at `path` yet — a restarted job may rerun the same command before
 * its first save, so that starts a new run, but never without saying so (a mistyped --out looked
 * like a resume). It came before the checks, and a refused resume first said it was continuing.
 */
export async function startOrResume(
  e: Engine, path: string | undefined, resume: boolean, settings: RunSettings, params: Map<string, Tensor>, optimizer: Optimizer, announce?: (line: string) => void,
  counts = new Map<string, SavedCount>(),
): Promise<TrainingProgress | undefined> {
  if (!path) return undefined;
  if (await prepareResume(path, resume, settings)) {
    const progress = await loadTrainingState(e, path, params, optimizer, counts);
    announce?.(`--resume: continuing ${path} after ${progress.steps} steps`);
    return progress;
  }
  // A fresh run saves its first state minutes in: find out now whether it can.
  const reason = await unwritableReason(path);
  if (reason) throw new Error(`cannot save the training state ${path}: ${reason}; nothing was trained`);
  if (resume) announce?.(`--resume: no training state at ${path} yet (nothing was saved before the last run stopped, or another --out): starting a new run`);
  return undefined;
}

/** A training loss that is NaN or Inf stops the run, naming the step (the last saved state stays as it was). */
export function checkLoss(loss: number, where: string): number {
  if (!Number.isFinite(loss)) throw new NonFiniteError(`the training loss is ${loss} at ${where}: lower the learning rate, or look for NaN/Inf in the inputs or the checkpoint; a state saved before (if any) is unchanged`);
  return loss;
}

/** A resumed run may train longer than it was started for, not shorter. */
export function checkEpochs(progress: TrainingProgress | undefined, epochs: number, path: string): void {
  if (!progress || progress.epoch + 1 <= epochs) return;
  // A state saved within epoch E (progress.batch set) has trained into E + 1 epochs, as one saved at its end has.
  const trained = progress.batch === undefined ? `already trained ${progress.epoch + 1} epochs` : `trained ${progress.epoch} epochs and ${progress.batch} batches of epoch ${progress.epoch + 1}`;
  throw new Error(`${path} has ${trained}; --epochs ${epochs} is fewer: give --epochs ${progress.epoch + 1} or more`);
}
