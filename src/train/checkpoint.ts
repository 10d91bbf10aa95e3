// Training state on disk: parameters, optimizer moments and counters in one safetensors file,
// written atomically, so a run resumes exactly where it stopped.
import type { Engine } from '../engine/engine.ts';
import type { Tensor } from '../engine/tensor.ts';
import { openSafetensors, writeSafetensors } from '../model/checkpoint/safetensors.ts';
import type { Optimizer } from './optimizer.ts';

export interface TrainingProgress {
  epoch: number;
  /** Optimizer steps taken so far. */
  steps: number;
  [key: string]: number | string;
}

export async function saveTrainingState(path: string, params: Map<string, Tensor>, optimizer: Optimizer, progress: TrainingProgress): Promise<void> {
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
  for (const [k, p] of params) tensors[`param.${k}`] = { shape: [...p.shape], data: await p.read() };
  for (const [k, t] of optimizer.state()) tensors[`optim.${k}`] = { shape: [...t.shape], data: await t.read() };
  await writeSafetensors(path, tensors, { kind: 'difrep-training-state', progress: JSON.stringify({ ...progress, optimizerSteps: optimizer.steps }) });
}

/** Restores parameters (in place) and optimizer state; returns the saved progress. */
export async function loadTrainingState(e: Engine, path: string, params: Map<string, Tensor>, optimizer: Optimizer): Promise<TrainingProgress> {
  const src = await openSafetensors(path);
  try {
    if (src.metadata.kind !== 'difrep-training-state') throw new Error(`${path} is not a difrep training checkpoint`);
    for (const [k, p] of params) {
      const key = `param.${k}`;
      const info = src.info(key);
      if (!info) throw new Error(`${path}: parameter ${k} is missing; the checkpoint belongs to another model`);
      if (info.shape.join() !== p.shape.join()) throw new Error(`${path}: parameter ${k} is [${info.shape}] in the checkpoint, [${p.shape}] in the model`);
      e.writeBuffer(p.buffer, 0, await src.read(key));
    }
    const progress = JSON.parse(src.metadata.progress) as TrainingProgress & { optimizerSteps: number };
    const state = new Map<string, Float32Array>();
    for (const k of src.keys()) if (k.startsWith('optim.')) state.set(k.slice(6), await src.read(k));
    optimizer.loadState(progress.optimizerSteps, state);
    return progress;
  } finally {
    await src.close();
  }
}
