// Compares the engine against a reference dump written by the PyTorch code (the format of
// ../shared/reference: param.*, input.*, emb, block.b, output). Used by `difrep parity` and tests.
import type { Engine } from '../engine/engine.ts';
import { openSafetensors } from './checkpoint/safetensors.ts';
import { type TensorSource, withPrefix } from './checkpoint/tensor-source.ts';
import { linearSchedule, qSample } from './diffusion.ts';
import { UNet } from './unet.ts';
import { flagsFromJson } from './unet-config.ts';

export interface Comparison {
  name: string;
  maxAbs: number;
  /** max|a − r| / max|r| */
  maxRel: number;
  tolerance: number;
  pass: boolean;
}

export function compareArrays(name: string, actual: Float32Array, ref: Float32Array, tolerance: number): Comparison {
  if (actual.length !== ref.length) throw new Error(`${name}: ${actual.length} values computed, ${ref.length} in the reference`);
  let maxAbs = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.abs(actual[i] - ref[i]);
    if (!(d <= maxAbs)) maxAbs = Number.isNaN(d) ? Infinity : d;
    den = Math.max(den, Math.abs(ref[i]));
  }
  const maxRel = den === 0 ? maxAbs : maxAbs / den;
  return { name, maxAbs, maxRel, tolerance, pass: maxRel <= tolerance };
}

export interface ParityOptions {
  forwardTolerance?: number;
  onResult?: (c: Comparison) => void;
}

export interface ParityReport {
  kind: string;
  config: string;
  results: Comparison[];
  pass: boolean;
}

/** Rebuilds the U-Net of a `kind: unet` dump from its metadata and compares every tensor it holds. */
export async function unetParity(e: Engine, dump: TensorSource, opts: ParityOptions = {}): Promise<ParityReport> {
  const tol = opts.forwardTolerance ?? 1e-4;
  if (!dump.metadata.config) throw new Error(`${dump.name}: no "config" metadata; not a U-Net reference dump`);
  const flags = flagsFromJson(dump.metadata.config);
  const unet = await UNet.load(e, flags, withPrefix(dump, 'param.'));
  const results: Comparison[] = [];
  const report = (c: Comparison) => {
    results.push(c);
    opts.onResult?.(c);
  };
  const has = (k: string) => dump.info(k) !== undefined;
  const load = async (k: string) => e.tensor(await dump.read(k), dump.info(k)!.shape, k);
  const t = Array.from(await dump.read('input.t'));
  let xt = await load('input.x_t');
  if (has('input.x0') && has('input.noise')) {
    const x0 = await load('input.x0');
    const noise = await load('input.noise');
    const mine = qSample(e, linearSchedule(1000), x0, t, noise);
    report(compareArrays('input.x_t', await mine.read(), await dump.read('input.x_t'), tol));
    for (const v of [x0, noise, mine]) v.dispose();
  }
  const blocks = dump.keys().filter((k) => /^block\.\d+$/.test(k)).map((k) => Number(k.slice(6))).sort((a, b) => a - b);
  const r = unet.forward(xt, t, { taps: blocks, output: has('output'), emb: has('emb') });
  if (r.emb) report(compareArrays('emb', await r.emb.read(), await dump.read('emb'), tol));
  for (const b of blocks) report(compareArrays(`block.${b}`, await r.taps.get(b)!.read(), await dump.read(`block.${b}`), tol));
  if (r.output) report(compareArrays('output', await r.output.read(), await dump.read('output'), tol));
  for (const v of [...r.taps.values(), r.output, r.emb, xt]) v?.dispose();
  for (const p of unet.parameters().values()) p.dispose();
  return { kind: 'unet', config: dump.metadata.config, results, pass: results.every((c) => c.pass) };
}

/** Opens a dump and runs the parity check that fits its `kind`. */
export async function parity(e: Engine, file: string, opts: ParityOptions = {}): Promise<ParityReport> {
  const dump = await openSafetensors(file);
  try {
    const kind = dump.metadata.kind ?? 'unet';
    if (kind === 'unet') return await unetParity(e, dump, opts);
    throw new Error(`${file}: parity for dumps of kind "${kind}" is not implemented yet (U-Net dumps are)`);
  } finally {
    await dump.close();
  }
}
