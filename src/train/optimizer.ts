// Adam (torch.optim.Adam semantics, one WGSL kernel per parameter tensor, no CPU round trip),
// plain SGD, and StepLR. Optimizer state can be saved and restored so training resumes exactly.
import { ADAM_WORKGROUP, adamKernel } from '../../kernels/adam.wgsl.ts';
import { blockGrid, elementLoads } from '../../kernels/flat-index.ts';
import type { Engine } from '../engine/engine.ts';
import { add, scale } from '../engine/ops/elementwise.ts';
import type { Tensor } from '../engine/tensor.ts';

export interface AdamOptions {
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

export interface Optimizer {
  lr: number;
  /** Number of steps taken. */
  readonly steps: number;
  /** Updates every parameter that has a gradient, in place. */
  step(): void;
  /** Disposes the parameters' gradients. */
  zeroGrad(): void;
  /** Tensors that must be saved to resume (besides the parameters). */
  state(): Map<string, Tensor>;
  /**
   * Throws OptimizerStateError when a saved `state()` does not fit these parameters or the `steps`
   * it was saved after: a tensor for no parameter, one moment of a pair, a wrong length, no
   * moments at all after steps (or some before any), a negative second moment.
   */
  checkState(state: Map<string, Float32Array>, steps: number): void;
  /** Restores `state()` as saved after `steps` steps; checkState first, so a refused state changes nothing. */
  loadState(steps: number, state: Map<string, Float32Array>): void;
  /**
   * Frees what the optimizer holds on the GPU (Adam's moments) and gives each parameter back the
   * requiresGrad it had before the optimizer set it; the parameters stay.
   */
  dispose(): void;
}

/** The optimizers holding each parameter, and the requiresGrad it had before the first of them. */
const gradHolders = new WeakMap<Tensor, { holders: number; before: boolean }>();

/**
 * Sets requiresGrad on every parameter and returns what gives them back the flag they had once no
 * optimizer holds them (a second call does nothing): a U-Net pretrained in the process kept its
 * flags, so every later forward was recorded on the tape and kept its activations until a
 * backward that inference never calls; and an optimizer disposed while another over the same
 * parameters trains (a new learning-rate phase) must not stop the other's gradients.
 */
function requireGrad(params: Map<string, Tensor>): () => void {
  const held = [...new Set(params.values())];
  for (const p of held) {
    const h = gradHolders.get(p);
    if (h) h.holders++;
    else gradHolders.set(p, { holders: 1, before: p.requiresGrad });
    p.requiresGrad = true;
  }
  let released = false;
  return () => {
    if (released) return;
    released = true;
    for (const p of held) {
      const h = gradHolders.get(p)!;
      if (--h.holders > 0) continue;
      p.requiresGrad = h.before;
      gradHolders.delete(p);
    }
  };
}

/** Saved optimizer state that does not fit the optimizer it is loaded into. */
export class OptimizerStateError extends Error {
  constructor(detail: string) {
    super(detail);
    this.name = 'OptimizerStateError';
  }
}

function refuseUnknown(optimizer: string, state: Map<string, Float32Array>, known: Set<string>): void {
  const unknown = [...state.keys()].filter((k) => !known.has(k));
  if (unknown.length) throw new OptimizerStateError(`${optimizer} state for no parameter of this model: ${unknown.slice(0, 5).join(', ')}${unknown.length > 5 ? `, … (${unknown.length})` : ''}`);
}

/** A RangeError naming the hyper-parameter when `ok` is false (NaN and ±Infinity fail every test given). */
function checkHyperparameter(owner: string, name: string, value: number, ok: boolean, expected: string): void {
  if (!ok || !Number.isFinite(value)) throw new RangeError(`${owner}: ${name} must be ${expected}, got ${value}`);
}

export class Adam implements Optimizer {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private t = 0;
  private moments = new Map<string, { m: Tensor; v: Tensor }>();
  /**
   * Steps each parameter has taken (torch.optim.Adam's state['step']): a parameter without a
   * gradient at a step keeps its count, so its bias correction is that of its own steps.
   */
  private paramSteps = new Map<string, number>();
  /** The step counts state() handed out last (one value each), freed at the next call. */
  private savedSteps: Tensor[] = [];
  private restoreRequiresGrad: () => void;

  constructor(private engine: Engine, private params: Map<string, Tensor>, opts: AdamOptions) {
    this.lr = opts.lr;
    [this.beta1, this.beta2] = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
    // torch.optim.Adam's checks: a negative lr ascends, a negative eps can divide by zero.
    checkHyperparameter('Adam', 'lr', this.lr, this.lr >= 0, '≥ 0');
    checkHyperparameter('Adam', 'eps', this.eps, this.eps >= 0, '≥ 0');
    checkHyperparameter('Adam', 'betas[0]', this.beta1, this.beta1 >= 0 && this.beta1 < 1, 'in [0, 1)');
    checkHyperparameter('Adam', 'betas[1]', this.beta2, this.beta2 >= 0 && this.beta2 < 1, 'in [0, 1)');
    checkHyperparameter('Adam', 'weightDecay', this.weightDecay, this.weightDecay >= 0, '≥ 0');
    for (const p of params.values()) engine.checkOwn(p, 'Adam');
    this.restoreRequiresGrad = requireGrad(params);
  }

  get steps(): number {
    return this.t;
  }

  private momentsOf(name: string, p: Tensor) {
    let mv = this.moments.get(name);
    if (!mv) {
      mv = { m: this.engine.keep(this.engine.zeros(p.shape, `adam.m.${name}`)), v: this.engine.keep(this.engine.zeros(p.shape, `adam.v.${name}`)) };
      this.moments.set(name, mv);
    }
    return mv;
  }

  step(): void {
    this.t++;
    for (const [name, p] of this.params) {
      if (!p.grad) continue;
      const t = (this.paramSteps.get(name) ?? 0) + 1;
      this.paramSteps.set(name, t);
      const bc1 = 1 - this.beta1 ** t;
      const bc2 = 1 - this.beta2 ** t;
      const { m, v } = this.momentsOf(name, p);
      const { vec4, count: n } = elementLoads(p.size);
      this.engine.dispatch({
        kernel: adamKernel(vec4),
        bindings: [p, p.grad, m, v],
        params: { n, beta1: this.beta1, beta2: this.beta2, oneMinusBeta1: 1 - this.beta1, oneMinusBeta2: 1 - this.beta2, eps: this.eps, stepSize: this.lr / bc1, sqrtBiasCorrection2: Math.sqrt(bc2), weightDecay: this.weightDecay },
        workgroups: blockGrid(n, ADAM_WORKGROUP),
      });
      p.markWritten();
    }
  }

  zeroGrad(): void {
    for (const p of this.params.values()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  dispose(): void {
    for (const { m, v } of this.moments.values()) {
      m.dispose();
      v.dispose();
    }
    this.moments.clear();
    for (const t of this.savedSteps) t.dispose();
    this.savedSteps = [];
    this.restoreRequiresGrad();
  }

  state(): Map<string, Tensor> {
    for (const t of this.savedSteps) t.dispose();
    this.savedSteps = [];
    const out = new Map<string, Tensor>();
    for (const [name, { m, v }] of this.moments) {
      out.set(`exp_avg.${name}`, m);
      out.set(`exp_avg_sq.${name}`, v);
      const step = this.engine.keep(this.engine.tensor(Float32Array.of(this.paramSteps.get(name) ?? 0), [1], `adam.step.${name}`));
      this.savedSteps.push(step);
      out.set(`step.${name}`, step);
    }
    return out;
  }

  checkState(state: Map<string, Float32Array>, steps: number): void {
    // A parameter that never had a gradient has no moments (as in torch.optim.Adam); one that has
    // only one of the two would restart it at zero under a bias correction for all the steps taken.
    const known = new Set<string>();
    for (const [name, p] of this.params) {
      const m = state.get(`exp_avg.${name}`);
      const v = state.get(`exp_avg_sq.${name}`);
      if (!m && !v) continue;
      if (!m || !v) throw new OptimizerStateError(`Adam state of ${name} has ${m ? 'exp_avg' : 'exp_avg_sq'} without ${m ? 'exp_avg_sq' : 'exp_avg'}`);
      for (const [slot, d] of [['exp_avg', m], ['exp_avg_sq', v]] as const) {
        if (d.length !== p.size) throw new OptimizerStateError(`Adam ${slot} of ${name} holds ${d.length} values, its parameter [${p.shape}] ${p.size}`);
        known.add(`${slot}.${name}`);
      }
      // A mean of squares: a negative one makes sqrt(v) NaN at the first step after the resume.
      const negative = v.findIndex((x) => x < 0);
      if (negative >= 0) throw new OptimizerStateError(`Adam exp_avg_sq of ${name} holds ${v[negative]} at ${negative}; a second moment is at least 0 (the state was edited or corrupted)`);
      // States saved before per-parameter counts have none: the parameter took every step.
      const step = state.get(`step.${name}`);
      if (step) {
        if (step.length !== 1 || !Number.isInteger(step[0]) || step[0] < 1 || step[0] > steps) {
          throw new OptimizerStateError(`Adam step of ${name} is ${step.length === 1 ? step[0] : `${step.length} values`}; it counts the parameter's steps: an integer from 1 to the ${steps} steps taken`);
        }
        known.add(`step.${name}`);
      }
    }
    refuseUnknown('Adam', state, known);
    // Zero moments under the bias correction of step steps + 1 would make the next updates ~3× too large.
    if (steps > 0 && this.params.size > 0 && known.size === 0) throw new OptimizerStateError(`Adam state holds no moments after ${steps} steps (they were removed, or the state was saved without them)`);
    if (steps === 0 && known.size > 0) throw new OptimizerStateError('Adam state holds moments but records 0 steps taken');
  }

  loadState(steps: number, state: Map<string, Float32Array>): void {
    this.checkState(state, steps);
    this.t = steps;
    this.paramSteps.clear();
    for (const [name, p] of this.params) {
      const m = state.get(`exp_avg.${name}`);
      const v = state.get(`exp_avg_sq.${name}`);
      if (!m || !v) continue;
      this.paramSteps.set(name, state.get(`step.${name}`)?.[0] ?? steps);
      const mv = this.momentsOf(name, p);
      this.engine.writeBuffer(mv.m.buffer, 0, m);
      this.engine.writeBuffer(mv.v.buffer, 0, v);
    }
  }
}

/** Plain SGD (no momentum), as the released diffssl scripts train: p ← p − lr·(g + wd·p). */
export class Sgd implements Optimizer {
  private t = 0;
  private restoreRequiresGrad: () => void;
  constructor(private engine: Engine, private params: Map<string, Tensor>, public lr: number, private weightDecay = 0) {
    checkHyperparameter('Sgd', 'lr', lr, lr >= 0, '≥ 0');
    checkHyperparameter('Sgd', 'weightDecay', weightDecay, weightDecay >= 0, '≥ 0');
    // Its step writes back through this engine's copies, which do not see whose buffer they write:
    // another engine's parameter was left as it was, without a word.
    for (const p of params.values()) engine.checkOwn(p, 'Sgd');
    this.restoreRequiresGrad = requireGrad(params);
  }

  get steps(): number {
    return this.t;
  }

  step(): void {
    this.t++;
    const e = this.engine;
    e.noGrad(() => {
      for (const p of this.params.values()) {
        if (!p.grad) continue;
        const next = e.tidy(() => {
          const g = this.weightDecay ? add(p.grad!, scale(p, this.weightDecay)) : p.grad!;
          return add(p, scale(g, -this.lr));
        });
        e.copyBuffer(next.buffer, 0, p.buffer, 0, p.byteLength);
        p.markWritten();
        next.dispose();
      }
    });
  }

  zeroGrad(): void {
    for (const p of this.params.values()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  dispose(): void {
    this.restoreRequiresGrad();
  }

  state(): Map<string, Tensor> {
    return new Map();
  }

  checkState(state: Map<string, Float32Array>, _steps: number): void {
    refuseUnknown('SGD', state, new Set());
  }

  loadState(steps: number, state: Map<string, Float32Array>): void {
    this.checkState(state, steps);
    this.t = steps;
  }
}

/** StepLR: lr = base · γ^⌊epoch / stepSize⌋ (paper: step 7, γ 0.1). */
export class StepLR {
  constructor(private optimizer: Optimizer, readonly baseLr: number, readonly stepSize = 7, readonly gamma = 0.1) {
    // A step size of 0 made every lr NaN, refused later by the Adam kernel as "stepSize = NaN".
    checkHyperparameter('StepLR', 'stepSize', stepSize, Number.isInteger(stepSize) && stepSize >= 1, 'an integer ≥ 1');
    checkHyperparameter('StepLR', 'baseLr', baseLr, baseLr >= 0, '≥ 0');
    checkHyperparameter('StepLR', 'gamma', gamma, gamma >= 0, '≥ 0');
  }

  /** Sets the optimizer's learning rate for `epoch` (0-based) and returns it. */
  setEpoch(epoch: number): number {
    this.optimizer.lr = this.baseLr * this.gamma ** Math.floor(epoch / this.stepSize);
    return this.optimizer.lr;
  }
}

/** Several optimizers (parameter groups with their own learning rates) saved and stepped as one. */
export class OptimizerGroups implements Optimizer {
  constructor(private groups: Optimizer[]) {}

  get lr(): number {
    return this.groups[0].lr;
  }

  set lr(_v: number) {
    throw new Error('OptimizerGroups: set each group\'s learning rate (one StepLR per group)');
  }

  get steps(): number {
    return this.groups[0].steps;
  }

  step(): void {
    for (const g of this.groups) g.step();
  }

  zeroGrad(): void {
    for (const g of this.groups) g.zeroGrad();
  }

  dispose(): void {
    for (const g of this.groups) g.dispose();
  }

  state(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.groups.forEach((g, i) => {
      for (const [k, v] of g.state()) out.set(`group${i}.${k}`, v);
    });
    return out;
  }

  /** Each group's share of `state` (keys group<i>.*, the prefix removed). */
  private split(state: Map<string, Float32Array>): Map<string, Float32Array>[] {
    const shares = this.groups.map(() => new Map<string, Float32Array>());
    for (const [k, v] of state) {
      const m = /^group(\d+)\.(.*)$/s.exec(k);
      const share = m ? shares[Number(m[1])] : undefined;
      if (!share) throw new OptimizerStateError(`state ${k} belongs to none of the ${this.groups.length} optimizer groups`);
      share.set(m![2], v);
    }
    return shares;
  }

  checkState(state: Map<string, Float32Array>, steps: number): void {
    this.split(state).forEach((share, i) => this.groups[i].checkState(share, steps));
  }

  loadState(steps: number, state: Map<string, Float32Array>): void {
    // Every group's share is checked before any group loads its own.
    const shares = this.split(state);
    shares.forEach((share, i) => this.groups[i].checkState(share, steps));
    shares.forEach((share, i) => this.groups[i].loadState(steps, share));
  }
}
