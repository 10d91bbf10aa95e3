// Named parameters of a module, PyTorch state_dict style: validation against a checkpoint
// (missing / unexpected keys, shapes), loading, and PyTorch's default initialisations.
import type { Engine } from '../engine/engine.ts';
import { mulberry32 } from '../engine/random.ts';
import { shapeString, type Tensor } from '../engine/tensor.ts';
import { readFinite, type TensorSource } from './checkpoint/tensor-source.ts';

/** A checkpoint that does not fit the module built from the config. */
export class CheckpointMismatchError extends Error {
  constructor(detail: string) {
    super(detail);
    this.name = 'CheckpointMismatchError';
  }
}

export type Init = 'zeros' | 'ones' | { uniform: number };

export interface ParamSpec {
  shape: number[];
  init: Init;
}

/**
 * The metadata `kind` of difrep's training-state files (src/train/checkpoint.ts writes them: params
 * as param.*, optimizer moments as optim.*): also recognised here, where one is given as weights.
 */
export const TRAINING_STATE_KIND = 'difrep-training-state';

/** The most keys or shape mismatches a mismatch error lists of each kind. */
const SHOWN = 8;
const DATA_PARALLEL = 'module.';

/** Throws one error listing the missing and unexpected keys and the shape mismatches (the first 8 of each), with the likely cause where one is plain. */
export function checkStateDict(expected: Map<string, number[]>, source: TensorSource, what: string): void {
  const present = new Set(source.keys());
  const missing = [...expected.keys()].filter((k) => !present.has(k));
  const unexpected = [...present].filter((k) => !expected.has(k));
  const problems: string[] = [];
  const list = (ks: string[]) => `${ks.slice(0, SHOWN).join(', ')}${ks.length > SHOWN ? ', …' : ''}`;
  if (missing.length) problems.push(`missing keys (${missing.length}): ${list(missing)}`);
  if (unexpected.length) problems.push(`unexpected keys (${unexpected.length}): ${list(unexpected)}`);
  const shapes: string[] = [];
  for (const [k, shape] of expected) {
    const info = source.info(k);
    if (info && info.shape.join() !== shape.join()) {
      shapes.push(`shape mismatch for ${k}: checkpoint ${shapeString(info.shape)}, model ${shapeString(shape)}`);
    }
  }
  problems.push(...shapes.slice(0, SHOWN));
  if (shapes.length > SHOWN) problems.push(`… and ${shapes.length - SHOWN} more shape mismatches`);
  // torch.nn.DataParallel (and DistributedDataParallel) save the wrapped model's keys as module.<key>.
  const missingSet = new Set(missing);
  if (unexpected.length && unexpected.every((k) => k.startsWith(DATA_PARALLEL) && missingSet.has(k.slice(DATA_PARALLEL.length)))) {
    problems.push(`the keys carry DataParallel's '${DATA_PARALLEL}' prefix: strip it (in Python: save {k.removeprefix('${DATA_PARALLEL}'): v for k, v in sd.items()} instead of sd, or model.module.state_dict() instead of model.state_dict())`);
  }
  if (problems.length) throw new CheckpointMismatchError(`${source.name} does not fit the ${what}:\n  ${problems.join('\n  ')}`);
}

/** Loads every expected key (after checkStateDict) as a kept tensor; NaN or ±Inf refuse the load. */
export async function loadStateDict(e: Engine, expected: Map<string, number[]>, source: TensorSource, what: string): Promise<Map<string, Tensor>> {
  checkStateDict(expected, source, what);
  const out = new Map<string, Tensor>();
  try {
    for (const [k, shape] of expected) out.set(k, e.keep(e.tensor(await readFinite(source, k), shape, k)));
  } catch (err) {
    for (const t of out.values()) t.dispose();
    throw err;
  }
  return out;
}

/** PyTorch-style initial values from a seeded generator (Linear/Conv: U(−1/√fan_in, 1/√fan_in)). */
export function initStateDict(e: Engine, specs: Map<string, ParamSpec>, seed: number): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [k, data] of initialValues(specs, seed)) out.set(k, e.keep(e.tensor(data, specs.get(k)!.shape, k)));
  return out;
}

/** The values initStateDict uploads, on the CPU. */
export function initialValues(specs: Map<string, ParamSpec>, seed: number): Map<string, Float32Array> {
  const rand = mulberry32(seed);
  const out = new Map<string, Float32Array>();
  for (const [k, spec] of specs) {
    const n = spec.shape.reduce((p, d) => p * d, 1);
    const data = new Float32Array(n);
    if (spec.init === 'ones') data.fill(1);
    else if (spec.init !== 'zeros') for (let i = 0; i < n; i++) data[i] = (2 * rand() - 1) * spec.init.uniform;
    out.set(k, data);
  }
  return out;
}

/** Bound of PyTorch's default Linear/Conv init for a weight of this shape: 1/√fan_in. */
export const fanInBound = (shape: number[]) => 1 / Math.sqrt(shape.slice(1).reduce((p, d) => p * d, 1));
