// Many linear probes trained in lockstep as one LinearProbeStack: fitHead's recipe for a linear
// head (Adam, StepLR, the same seeded shuffle each epoch, the same initial values), so each probe
// ends as fitHead would leave it alone, at a fraction of the dispatches. Probes whose stacked
// inputs or weights would exceed one storage binding train as several stacks, one after another
// (each probe trains alone either way, so the results are the same).
import type { Engine } from '../engine/engine.ts';
import { scale } from '../engine/ops/elementwise.ts';
import { reshape } from '../engine/ops/layout.ts';
import { crossEntropy } from '../engine/ops/nn.ts';
import { firstNonFinite } from '../model/checkpoint/tensor-source.ts';
import { LinearProbeStack } from '../model/heads/linear-probe-stack.ts';
import { epochBatches } from './epoch-batches.ts';
import { checkClassLabels, countTopK } from './eval/classification.ts';
import type { FeatureArrays } from './fit.ts';
import { assertFiniteLogits, NonFiniteError } from './finite.ts';
import { Adam, StepLR } from './optimizer.ts';
import { StepLosses } from './step-losses.ts';
import { trainStepKeepingLoss } from './train-step.ts';

export interface ProbeStackOptions {
  classes: number;
  epochs: number;
  batchSize: number;
  lr: number;
  stepSize?: number;
  gamma?: number;
  seed?: number;
  /** What the probes are, for error messages (e.g. "sweep, pool 2, standardised"). */
  what: string;
  /** Each probe's name for error messages (e.g. its feature key); "probe p" when absent. */
  names?: readonly string[];
}

/** One probe's input: the single feature of a FeatureArrays, flattened per image. */
function flatOnly(d: FeatureArrays, what: string): { data: Float32Array; dim: number } {
  if (d.features.size !== 1) throw new Error(`${what}: a linear probe reads exactly one feature, got ${d.features.size}`);
  const f = [...d.features.values()][0];
  return { data: f.data, dim: f.shape.reduce((p, v) => p * v, 1) };
}

/** Trains probe p on trains[p] and scores it on tests[p] (all sharing images and labels): per probe its top-1, top-5 and test logits [count, classes]. */
export async function fitLinearProbeStack(e: Engine, trains: FeatureArrays[], tests: FeatureArrays[], o: ProbeStackOptions): Promise<{ top1: number; top5: number; logits: Float32Array }[]> {
  const P = trains.length;
  if (!P || tests.length !== P) throw new Error(`${o.what}: ${P} training and ${tests.length} test feature sets; give one of each per probe`);
  const [train0, test0] = [trains[0], tests[0]];
  checkClassLabels(train0.labels, o.classes, `${o.what}: training`);
  checkClassLabels(test0.labels, o.classes, `${o.what}: test`);
  for (const [name, sets, ref] of [['training', trains, train0], ['test', tests, test0]] as const) {
    for (const s of sets) if (s.count !== ref.count || Array.from({ length: s.count }, (_, i) => s.labels[i] !== ref.labels[i]).some(Boolean)) throw new Error(`${o.what}: every probe's ${name} features must cover the same images (and labels)`);
  }
  const train = trains.map((d) => flatOnly(d, o.what));
  const test = tests.map((d) => flatOnly(d, o.what));
  const dims = train.map((f) => f.dim);
  test.forEach((f, p) => {
    if (f.dim !== dims[p]) throw new Error(`${o.what}: probe ${p} has ${dims[p]} training but ${f.dim} test values per image`);
  });
  const labels = { train: train0.labels, test: Array.from({ length: test0.count }, (_, i) => test0.labels[i]) };
  const scores: { top1: number; top5: number; logits: Float32Array }[] = [];
  for (const group of bindingGroups(e, dims, o)) {
    const names = group.map((p) => o.names?.[p] ?? `probe ${p}`);
    scores.push(...(await fitStack(e, group.map((p) => train[p].data), group.map((p) => test[p].data), group.map((p) => dims[p]), train0.count, labels, o, names)));
  }
  return scores;
}

/**
 * The probes split, in order, into groups whose stack binds at most one storage binding at a time:
 * a group of g probes of width D (its widest) binds g·D·max(batch, classes) floats in its inputs
 * (or weights, their gradient and Adam's moments) and g·batch·classes in its logits.
 */
function bindingGroups(e: Engine, dims: readonly number[], o: ProbeStackOptions): number[][] {
  const floats = (count: number, width: number) => count * Math.max(width * Math.max(o.batchSize, o.classes), o.batchSize * o.classes);
  const groups: number[][] = [];
  let group: number[] = [];
  let width = 0;
  dims.forEach((d, p) => {
    if (4 * floats(1, d) > e.maxBindingBytes) {
      const name = o.names?.[p] ?? `probe ${p}`;
      throw new RangeError(`${o.what}, ${name}: ${d} values per image in a batch of ${o.batchSize} (or its ${o.classes} classes' weights) bind ${4 * floats(1, d)} bytes at once, over this device's largest storage binding (${e.maxBindingBytes}): give a smaller batch (--batch) or a larger pool (--pool)`);
    }
    if (group.length && 4 * floats(group.length + 1, Math.max(width, d)) > e.maxBindingBytes) {
      groups.push(group);
      group = [];
      width = 0;
    }
    group.push(p);
    width = Math.max(width, d);
  });
  groups.push(group);
  return groups;
}

/**
 * `err` (a non-finite loss) led by the probes whose weights are no longer finite: the stack
 * trains on the sum of its probes' losses, which names no probe, but each probe's gradient is its
 * own, so the step that met the NaN or Inf left it in that probe's weights alone.
 */
async function nameDivergedProbes(err: NonFiniteError, stack: LinearProbeStack, names: readonly string[]): Promise<NonFiniteError> {
  const [weight, bias] = await Promise.all([stack.params.get('weight')!.read(), stack.params.get('bias')!.read()]);
  const P = names.length;
  const part = (values: Float32Array, p: number) => values.subarray((p * values.length) / P, ((p + 1) * values.length) / P);
  const diverged = names.filter((_, p) => firstNonFinite(part(weight, p)) >= 0 || firstNonFinite(part(bias, p)) >= 0);
  return diverged.length ? new NonFiniteError(`${diverged.join(', ')}: ${err.message}`) : err;
}

/** Trains one stack of probes (inputs train[p] and test[p], dims[p] values per image) in lockstep. */
async function fitStack(
  e: Engine, trainData: Float32Array[], testData: Float32Array[], dims: number[], trainCount: number,
  labels: { train: ArrayLike<number>; test: number[] }, o: ProbeStackOptions, names: readonly string[],
): Promise<{ top1: number; top5: number; logits: Float32Array }[]> {
  const P = dims.length;
  const testCount = labels.test.length;
  const stack = LinearProbeStack.create(e, dims, o.classes, o.seed ?? 0);
  let made: Adam | undefined;
  // Freed however the run ends, a refused hyper-parameter included.
  try {
    const adam = new Adam(e, stack.params, { lr: o.lr });
    made = adam;
    const schedule = new StepLR(adam, o.lr, o.stepSize ?? 7, o.gamma ?? 0.1);
    for (let epoch = 0; epoch < o.epochs; epoch++) {
      schedule.setEpoch(epoch);
      const steps = new StepLosses(e);
      try {
        for (const [b, idx] of epochBatches(trainCount, o.batchSize, (o.seed ?? 0) * 1000 + epoch, o.what).entries()) {
          const batchLabels = idx.map((i) => labels.train[i]);
          const x = stack.pack(trainData, idx);
          // Σ_p of each probe's mean cross-entropy: probe p's gradient is exactly its own.
          const loss = await trainStepKeepingLoss(e, adam, () => scale(crossEntropy(reshape(stack.forward(x), [P * idx.length, o.classes]), Array.from({ length: P }, () => batchLabels).flat()), P)).finally(() => x.dispose());
          await steps.add(loss, batchLabels, `${o.what}: epoch ${epoch + 1}, batch ${b + 1}`);
        }
        await steps.read();
      } catch (err) {
        throw err instanceof NonFiniteError ? await nameDivergedProbes(err, stack, names) : err;
      } finally {
        steps.dispose(); // what a failed step left unread
      }
    }
    // Evaluation: probe p's logits [n, classes] are the p-th slab of each batch's [P, n, classes].
    const logits = Array.from({ length: P }, () => new Float32Array(testCount * o.classes));
    for (let s = 0; s < testCount; s += o.batchSize) {
      const idx = Array.from({ length: Math.min(o.batchSize, testCount - s) }, (_, i) => s + i);
      const x = stack.pack(testData, idx);
      const out = await e.noGrad(() => e.tidy(() => stack.forward(x))).readAndDispose();
      x.dispose();
      const per = idx.length * o.classes;
      for (let p = 0; p < P; p++) {
        // Checked per probe: an index into the stacked [P, n, classes] block named no image.
        const slab = out.subarray(p * per, (p + 1) * per);
        assertFiniteLogits(slab, o.classes, (row) => `${o.what}, ${names[p]}: the logits of test image ${s + row}`);
        logits[p].set(slab, s * o.classes);
      }
    }
    return logits.map((l) => {
      const c = countTopK(l, labels.test);
      return { top1: c.top1 / testCount, top5: c.top5 / testCount, logits: l };
    });
  } finally {
    for (const t of stack.params.values()) t.dispose();
    made?.dispose();
  }
}
