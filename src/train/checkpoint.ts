// Training state on disk: parameters, optimizer moments and counters in one safetensors file,
// written atomically, so a run resumes exactly where it stopped.
import type { Engine } from '../engine/engine.ts';
import type { Tensor } from '../engine/tensor.ts';
import { CheckpointError } from '../model/checkpoint/checkpoint-error.ts';
import { openSafetensors, writeSafetensors } from '../model/checkpoint/safetensors.ts';
import { firstNonFinite, readFinite } from '../model/checkpoint/tensor-source.ts';
import type { Optimizer } from './optimizer.ts';

export interface TrainingProgress {
  epoch: number;
  /** Optimizer steps taken so far. */
  steps: number;
  [key: string]: number | string;
}

/** Whether `v` is a finite number or a (nested) list of them. */
function onlyFiniteNumbers(v: unknown): boolean {
  return Array.isArray(v) ? v.every(onlyFiniteNumbers) : Number.isFinite(v);
}

/**
 * Writes the state atomically. A NaN or ±Inf anywhere (a diverged run) refuses the save, so the
 * previous state on disk stays the last good one.
 */
export async function saveTrainingState(path: string, params: Map<string, Tensor>, optimizer: Optimizer, progress: TrainingProgress): Promise<void> {
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, p] of params) tensors[`param.${k}`] = { shape: [...p.shape], data: await p.read() };
  for (const [k, t] of optimizer.state()) tensors[`optim.${k}`] = { shape: [...t.shape], data: await t.read() };
  const notSaved = (what: string) => new Error(`${path}: not saved: ${what} (training diverged?); the previous state is unchanged`);
  for (const [k, { data }] of Object.entries(tensors)) {
    const i = firstNonFinite(data);
    if (i >= 0) throw notSaved(`${k} holds ${data[i]} at index ${i}`);
  }
  for (const [k, v] of Object.entries(progress)) {
    if (typeof v === 'number' && !Number.isFinite(v)) throw notSaved(`progress ${k} is ${v}`);
  }
  // Losses arrive as JSON (a list of losses or of [step, loss]), where a NaN has become null.
  if (typeof progress.losses === 'string' && !onlyFiniteNumbers(JSON.parse(progress.losses))) throw notSaved('the losses hold a non-finite value');
  await writeSafetensors(path, tensors, { kind: 'difrep-training-state', progress: JSON.stringify({ ...progress, optimizerSteps: optimizer.steps }) });
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
 * Restores parameters (in place) and optimizer state; returns the saved progress. A tensor of the
 * wrong shape or holding NaN/±Inf refuses the whole load (CheckpointError naming file and tensor).
 */
export async function loadTrainingState(e: Engine, path: string, params: Map<string, Tensor>, optimizer: Optimizer): Promise<TrainingProgress> {
  const src = await openSafetensors(path);
  try {
    if (src.metadata.kind !== 'difrep-training-state') throw new CheckpointError(path, 'not a difrep training checkpoint');
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
    const state = new Map<string, Float32Array>();
    for (const k of src.keys()) {
      if (!k.startsWith('optim.')) continue;
      // Optimizer state is per parameter: <slot>.<parameter name>, with the parameter's shape.
      const name = k.slice(6);
      const p = params.get(name.slice(name.indexOf('.') + 1));
      const info = src.info(k)!;
      if (p && info.shape.join() !== p.shape.join()) throw new CheckpointError(path, `optimizer state ${name} is [${info.shape}], its parameter [${p.shape}]`);
      state.set(name, await readFinite(src, k));
    }
    for (const [p, data] of values) e.writeBuffer(p.buffer, 0, data);
    optimizer.loadState(progress.optimizerSteps, state);
    return progress;
  } finally {
    await src.close();
  }
}
