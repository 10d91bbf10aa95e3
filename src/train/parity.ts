// Parity with the PyTorch head dumps (attention-head, difformer, difeed): logits, loss, every
// parameter gradient, BatchNorm running statistics, and one Adam step fed the dump's own gradients
// (so the optimizer is checked separately from the gradients).
import type { Engine } from '../engine/engine.ts';
import { crossEntropy } from '../engine/ops/nn.ts';
import type { Tensor } from '../engine/tensor.ts';
import type { ByteSource } from '../model/checkpoint/byte-source.ts';
import { openSafetensors } from '../model/checkpoint/safetensors.ts';
import { type TensorSource, withPrefix } from '../model/checkpoint/tensor-source.ts';
import { linearSchedule, qSample } from '../model/diffusion.ts';
import { AttentionHead, type AttentionHeadOptions } from '../model/heads/attention-head.ts';
import { DifFeed } from '../model/heads/difeed.ts';
import { type Comparison, compareArrays, type ParityOptions, type ParityReport, unetParity } from '../model/parity.ts';
import { UNet } from '../model/unet.ts';
import { flagsFromJson } from '../model/unet-config.ts';
import { Adam } from './optimizer.ts';

export interface HeadParityOptions extends ParityOptions {
  gradientTolerance?: number;
  /**
   * A U-Net dump with the head dump's U-Net weights (adm64.safetensors): the head's input
   * features feat.* are then recomputed from input.x0 and input.noise.t<t> and compared too,
   * so the whole pipeline image → features → head is checked, not only the head.
   */
  unet?: TensorSource;
}

/** "…,Attention:64:4:4:2,…" → dim, heads, MLP ratio, layers. */
function parseFusionArc(arc: string): { dim: number; heads: number; mlpRatio: number; layers: number } {
  const m = /Attention:(\d+):(\d+):(\d+):(\d+)/.exec(arc);
  if (!m) throw new Error(`unsupported fusion_arc "${arc}"`);
  return { dim: Number(m[1]), heads: Number(m[2]), mlpRatio: Number(m[3]), layers: Number(m[4]) };
}

export async function headParity(e: Engine, dump: TensorSource, opts: HeadParityOptions = {}): Promise<ParityReport> {
  const fwdTol = opts.forwardTolerance ?? 1e-4;
  const gradTol = opts.gradientTolerance ?? 1e-3;
  const md = dump.metadata;
  const kind = md.kind;
  const results: Comparison[] = [];
  const report = async (name: string, actual: Tensor | Float32Array, refKey: string, tol: number) => {
    const a = actual instanceof Float32Array ? actual : await actual.read();
    const c = compareArrays(name, a, await dump.read(refKey), tol);
    results.push(c);
    opts.onResult?.(c);
  };
  const labels = Array.from(await dump.read('input.labels'));
  const arc = parseFusionArc(md.fusion_arc);
  const classes = Number(md.num_classes);
  const prePoolSize = Number(md.pre_pool_size);

  let params: Map<string, Tensor>;
  let logits: Tensor;
  let gradPrefix: string;
  let runEval: (() => Tensor) | null = null;
  let resolveTies: ((layer: number, check: () => Promise<Comparison[]>) => Promise<{ compared: Comparison[]; note: string } | undefined>) | null = null;
  // BatchNorm's running statistics and batch counts after the training forward, against adam1.*.
  let bnKeys: [Tensor | (() => Float32Array), string][] = [];
  if (kind === 'difeed') {
    const unetFlags = flagsFromJson(md.unet_config);
    const unet = await UNet.load(e, unetFlags, withPrefix(dump, 'unet.param.'));
    const t = Number(md.t);
    const difeed = await DifFeed.load(e, unet, {
      feedbackBlocks: JSON.parse(md.feedback_b_list), t, featureBlock: Number(md.second_pass_block), classes,
      head: { ...arc, prePoolSize },
    }, withPrefix(dump, 'param.'));
    const x0 = e.tensor(await dump.read('input.x0'), dump.info('input.x0')!.shape);
    const noise = e.tensor(await dump.read(`input.noise.t${t}`), dump.info(`input.noise.t${t}`)!.shape);
    const xt = qSample(e, linearSchedule(1000), x0, new Array(x0.shape[0]).fill(t), noise);
    params = difeed.trainableParameters();
    for (const p of params.values()) p.requiresGrad = true;
    const preRelu: Tensor[] = [];
    logits = difeed.forward(xt, true, { onPreActivation: (i, v) => (preRelu[i] = e.keep(v)) });
    // A ReLU input within rounding of 0 (|y| ≤ 2e-6·max|y|) may fall on the other side in PyTorch,
    // which moves the gradients of that feedback layer's conv and BatchNorm alone (they are all that
    // lies upstream of the ReLU: pass 1 is frozen; the head is downstream). So a failing parameter
    // of feedback layer i is rerun with subsets of layer i's ties nudged across 0, and counts as
    // matching when one subset makes all of layer i's parameters match; nothing else is excused.
    resolveTies = async (layer: number, check: () => Promise<Comparison[]>) => {
      const y = await preRelu[layer].read();
      const band = 2e-6 * y.reduce((m, a) => Math.max(m, Math.abs(a)), 0);
      const ties = [...y.keys()].filter((k) => Math.abs(y[k]) <= band);
      // Every subset of up to 4 ties; beyond that each tie alone, then all of them.
      const subsets = ties.length <= 4
        ? Array.from({ length: (1 << ties.length) - 1 }, (_, m) => ties.filter((_, j) => ((m + 1) >> j) & 1))
        : [...ties.map((k) => [k]), ties];
      for (const subset of subsets) {
        const off = new Float32Array(y.length);
        for (const k of subset) off[k] = -2 * y[k];
        const offsets: (Tensor | undefined)[] = [];
        offsets[layer] = e.tensor(off, preRelu[layer].shape, `tie-offset.${layer}`);
        for (const p of params.values()) {
          p.grad?.dispose();
          p.grad = null;
        }
        e.tape.backward(crossEntropy(difeed.forward(xt, true, { offsets, freezeRunningStats: true }), labels));
        offsets[layer]!.dispose();
        const compared = await check();
        if (compared.every((c) => c.pass)) return { compared, note: `feedback.${layer}: ${ties.length} ReLU input(s) within ${band.toExponential(1)} of 0; matched with ${subset.length === ties.length ? 'all of them' : `the one(s) at ${subset.join(', ')}`} moved across 0` };
      }
      return undefined;
    };
    gradPrefix = '';
    bnKeys = difeed.batchNorm.flatMap((bn, i) => [
      [bn.runningMean, `feedback.${i}.1.running_mean`], [bn.runningVar, `feedback.${i}.1.running_var`],
      [() => Float32Array.of(bn.batches), `feedback.${i}.1.num_batches_tracked`],
    ] as [Tensor | (() => Float32Array), string][]);
    runEval = () => e.noGrad(() => difeed.forward(xt, false));
  } else if (kind === 'attention-head' || kind === 'difformer') {
    const timesteps: number[] = JSON.parse(md.t_list);
    const blocks: number[] = JSON.parse(md.blocks);
    const features = new Map<number, Map<number, Tensor>>();
    for (const t of timesteps) {
      features.set(t, new Map(await Promise.all(blocks.map(async (b) => {
        const key = `feat.t${t}.b${b}`;
        return [b, e.tensor(await dump.read(key), dump.info(key)!.shape, key)] as [number, Tensor];
      }))));
    }
    if (opts.unet) {
      const unet = await UNet.load(e, flagsFromJson(md.unet_config), withPrefix(opts.unet, 'param.'));
      const x0 = e.tensor(await dump.read('input.x0'), dump.info('input.x0')!.shape, 'input.x0');
      for (const t of timesteps) {
        const noise = e.tensor(await dump.read(`input.noise.t${t}`), x0.shape, `input.noise.t${t}`);
        const ts = new Array<number>(x0.shape[0]).fill(t);
        const r = unet.forward(qSample(e, linearSchedule(1000), x0, ts, noise), ts, { taps: blocks });
        for (const b of blocks) await report(`feat.t${t}.b${b} (recomputed)`, r.taps.get(b)!, `feat.t${t}.b${b}`, fwdTol);
      }
    }
    const first = features.get(timesteps[0])!;
    const options: AttentionHeadOptions = {
      blocks: blocks.map((b) => ({ b, channels: first.get(b)!.shape[1], size: first.get(b)!.shape[2] })),
      timesteps, classes, ...arc, prePoolSize,
    };
    const head = await AttentionHead.load(e, options, withPrefix(dump, 'param.'));
    params = head.params;
    for (const p of params.values()) p.requiresGrad = true;
    logits = head.forward(features);
    gradPrefix = '';
  } else {
    throw new Error(`${dump.name}: unknown dump kind "${kind}"`);
  }

  await report('logits', logits, 'logits', fwdTol);
  const loss = crossEntropy(logits, labels);
  await report('loss', loss, 'loss', fwdTol);
  for (const [value, key] of bnKeys) await report(key, typeof value === 'function' ? value() : value, `adam1.${key}`, fwdTol);
  e.tape.backward(loss);
  const compareGrads = async (keys: string[]) => Promise.all(keys.map(async (k) => compareArrays(`grad.${k}`, await params.get(k)!.grad!.read(), await dump.read(`grad.${gradPrefix}${k}`), gradTol)));
  const first = new Map((await compareGrads([...params.keys()])).map((c) => [c.name.slice('grad.'.length), c]));
  // Feedback layers with a failing parameter get their ties resolved, one layer at a time.
  const layerOf = (k: string) => /^feedback\.(\d+)\./.exec(k)?.[1];
  const failingLayers = new Set([...first].filter(([k, c]) => !c.pass && layerOf(k) !== undefined).map(([k]) => Number(layerOf(k))));
  for (const layer of resolveTies ? failingLayers : []) {
    const keys = [...params.keys()].filter((k) => layerOf(k) === String(layer));
    const resolved = await resolveTies!(layer, () => compareGrads(keys));
    if (!resolved) continue;
    for (const c of resolved.compared) {
      const k = c.name.slice('grad.'.length);
      if (!first.get(k)!.pass) first.set(k, { ...c, note: `with ReLU ties resolved; ${first.get(k)!.maxRel.toExponential(2)} as first computed` });
    }
    opts.onNote?.(resolved.note);
  }
  for (const c of first.values()) {
    results.push(c);
    opts.onResult?.(c);
  }

  // Adam on the dump's gradients, compared with the dump's parameters after its step.
  const meta = JSON.parse(md.adam);
  const adam = new Adam(e, params, { lr: meta.lr, betas: meta.betas, eps: meta.eps, weightDecay: meta.weight_decay });
  for (const [k, p] of params) {
    p.grad?.dispose();
    p.grad = e.keep(e.tensor(await dump.read(`grad.${k}`), p.shape, `grad.${k}`));
  }
  const before = new Map(await Promise.all([...params].map(async ([k, p]) => [k, await p.read()] as const)));
  adam.step();
  for (const [k, p] of params) {
    const c = compareStep(`adam1.${k}`, before.get(k)!, await p.read(), await dump.read(`adam1.${k}`), gradTol);
    results.push(c);
    opts.onResult?.(c);
  }
  if (runEval) await report('eval_logits_after_step', runEval(), 'eval_logits_after_step', fwdTol);
  return { kind, config: md.unet_config ?? '', results, pass: results.every((c) => c.pass) };
}

/**
 * An optimizer step (parameters `start` → `actual`) against the reference's (`start` → `ref`),
 * relative to the reference's largest step: compared after the step, the parameters' own size
 * would hide a step several per cent off (lr 1e-3 moves a weight of 0.1 by 1 %). Each parameter is
 * stored in f32 on both sides, so a difference of one unit in its last place is rounding, not
 * error. From zero moments one Adam step is lr·g/(|g| + eps) whatever the betas (the bias
 * corrections cancel them): the optimizer's own tests cover those.
 */
export function compareStep(name: string, start: Float32Array, actual: Float32Array, ref: Float32Array, tolerance: number): Comparison {
  if (actual.length !== ref.length || start.length !== ref.length) throw new Error(`${name}: ${actual.length} values computed from ${start.length}, ${ref.length} in the reference`);
  let maxAbs = 0;
  let den = 0;
  for (let i = 0; i < ref.length; i++) {
    const d = Math.max(0, Math.abs(actual[i] - ref[i]) - f32Ulp(ref[i]));
    if (!(d <= maxAbs)) maxAbs = Number.isNaN(d) ? Infinity : d;
    den = Math.max(den, Math.abs(ref[i] - start[i]));
  }
  const maxRel = den === 0 ? maxAbs : maxAbs / den;
  return { name, maxAbs, maxRel, tolerance, pass: maxRel <= tolerance };
}

/** The gap from |v| to the next larger f32. */
function f32Ulp(v: number): number {
  const f = new Float32Array([Math.abs(v)]);
  new Int32Array(f.buffer)[0] += 1;
  return f[0] - Math.abs(v);
}

/** The `kind`s of reference dumps (a U-Net dump may leave it out). */
const PARITY_KINDS = ['unet', 'attention-head', 'difformer', 'difeed'];

/** Opens a dump (a path, or bytes already fetched, e.g. in a browser) and runs the parity check that fits its `kind`. */
export async function parity(e: Engine, file: string | ByteSource, opts: Omit<HeadParityOptions, 'unet'> & { unetFile?: string | ByteSource } = {}): Promise<ParityReport> {
  const dump = await openSafetensors(file);
  const unet = opts.unetFile ? await openSafetensors(opts.unetFile) : undefined;
  try {
    const kind = dump.metadata.kind ?? 'unet';
    // A checkpoint (weights alone) failed on its first missing input tensor, with no word of why.
    if (!PARITY_KINDS.includes(kind) || !dump.keys().some((k) => k.startsWith('input.'))) {
      const name = typeof file === 'string' ? file : 'this file';
      throw new Error(`${name} is not a reference dump (kind "${kind}", ${dump.keys().some((k) => k.startsWith('input.')) ? 'with' : 'no'} input.* tensors): parity compares the engine with dumps of the PyTorch reference code (${PARITY_KINDS.join(', ')}; ../shared/reference/README.md); U-Net weights go to --checkpoint of the other commands`);
    }
    if (unet && kind !== 'attention-head' && kind !== 'difformer') opts.onNote?.(`--unet recomputes the input features of attention-head and difformer dumps; a ${kind} dump ${kind === 'unet' ? 'is the U-Net itself' : 'holds its own U-Net weights'}, so it is not used here`);
    return kind === 'unet' ? await unetParity(e, dump, opts) : await headParity(e, dump, { ...opts, unet });
  } finally {
    await dump.close();
    await unet?.close();
  }
}
