// Compares the engine against a reference dump written by the PyTorch code (the format of
// ../shared/reference: param.*, input.*, emb, block.b, output). Used by `difrep parity` and tests.
import type { Engine } from '../engine/engine.ts';
import type { Tensor } from '../engine/tensor.ts';
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
  /** How the comparison was made, where it is not the plain one. */
  note?: string;
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
  gradientTolerance?: number;
  onResult?: (c: Comparison) => void;
  /** Remarks about the run (e.g. ties a comparison had to resolve). */
  onNote?: (note: string) => void;
}

export interface ParityReport {
  kind: string;
  config: string;
  results: Comparison[];
  pass: boolean;
}

/** What a U-Net dump may hold, each of it read or compared by unetParity. */
const UNET_DUMP_KEYS = /^(param\..+|input\.(t|x_t|x0|noise)|emb|output|block\.\d+|grad\.(R|x_t|block\.\d+|param\..+))$/;

/**
 * A dump that lacks what its metadata promises, or holds tensors no comparison reads, cannot pass:
 * the comparisons follow the keys present, so a dump missing its blocks, output or grad.R passed on
 * the rest (adm32-mini without grad.R: "PASS 12/12", its 11 gradients never compared).
 */
function checkUNetDumpComplete(dump: TensorSource): void {
  const keys = dump.keys();
  const problems: string[] = [];
  const blocks = Number(dump.metadata.blocks);
  if (Number.isInteger(blocks) && blocks > 0) {
    const missing = Array.from({ length: blocks }, (_, i) => `block.${i + 1}`).filter((k) => !keys.includes(k));
    if (missing.length) problems.push(`its metadata lists ${blocks} blocks, but ${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} missing`);
  }
  for (const k of ['input.t', 'input.x_t', 'emb', 'output']) if (!keys.includes(k)) problems.push(`${k} is missing`);
  if (keys.some((k) => k.startsWith('grad.')) && !keys.includes('grad.R')) problems.push('it holds gradients but no grad.R, the cotangent they were taken for');
  if (keys.includes('grad.R') && dump.metadata.grad_target_block === undefined) problems.push('grad.R has no grad_target_block metadata');
  const unread = keys.filter((k) => !UNET_DUMP_KEYS.test(k));
  if (unread.length) problems.push(`no comparison reads ${unread.slice(0, 5).join(', ')}${unread.length > 5 ? `, … (${unread.length})` : ''}`);
  if (problems.length) throw new Error(`${dump.name}: not a complete U-Net reference dump: ${problems.join('; ')}`);
}

/** Rebuilds the U-Net of a `kind: unet` dump from its metadata and compares every tensor it holds. */
export async function unetParity(e: Engine, dump: TensorSource, opts: ParityOptions = {}): Promise<ParityReport> {
  const tol = opts.forwardTolerance ?? 1e-4;
  if (!dump.metadata.config) throw new Error(`${dump.name}: no "config" metadata; not a U-Net reference dump`);
  checkUNetDumpComplete(dump);
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
  for (const v of [...r.taps.values(), r.output, r.emb]) v?.dispose();
  if (has('grad.R')) await gradientParity(e, unet, dump, xt, t, opts.gradientTolerance ?? 1e-3, report);
  xt.dispose();
  for (const p of unet.parameters().values()) p.dispose();
  return { kind: 'unet', config: dump.metadata.config, results, pass: results.every((c) => c.pass) };
}

/**
 * The backward dump: L = Σ R ⊙ block_B. Every block output gets a zero tensor added that requires
 * grad, so its gradient (all paths, skips included) lands on that leaf; x_t and the dumped
 * weights are leaves too.
 */
async function gradientParity(
  e: Engine, unet: UNet, dump: TensorSource, xt: Tensor, t: number[], tol: number, report: (c: Comparison) => void,
): Promise<void> {
  const B = Number(dump.metadata.grad_target_block);
  const gradBlocks = dump.keys().filter((k) => /^grad\.block\.\d+$/.test(k)).map((k) => Number(k.slice(11)));
  const gradParams = dump.keys().filter((k) => k.startsWith('grad.param.')).map((k) => k.slice(11));
  const probes = new Map<number, Tensor>();
  for (const b of gradBlocks) {
    const blk = unet.plan.blocks[b - 1];
    const z = e.zeros([xt.shape[0], blk.outChannels, blk.size, blk.size], `probe.block.${b}`);
    z.requiresGrad = true;
    probes.set(b, z);
  }
  xt.requiresGrad = true;
  for (const k of gradParams) unet.param(k).requiresGrad = true;
  const r = unet.forward(xt, t, { taps: [B], addToBlock: probes });
  const R = e.tensor(await dump.read('grad.R'), dump.info('grad.R')!.shape, 'grad.R');
  e.tape.backward(r.taps.get(B)!, R);
  report(compareArrays('grad.x_t', await xt.grad!.read(), await dump.read('grad.x_t'), tol));
  for (const b of gradBlocks.sort((x, y) => x - y)) {
    report(compareArrays(`grad.block.${b}`, await probes.get(b)!.grad!.read(), await dump.read(`grad.block.${b}`), tol));
  }
  for (const k of gradParams) {
    const p = unet.param(k);
    report(compareArrays(`grad.param.${k}`, await p.grad!.read(), await dump.read(`grad.param.${k}`), tol));
    p.requiresGrad = false;
    p.grad?.dispose();
    p.grad = null;
  }
  xt.requiresGrad = false;
  xt.grad?.dispose();
  xt.grad = null;
  for (const v of [...probes.values(), R, ...r.taps.values()]) v.dispose();
}
