// Adam (torch.optim.Adam semantics, one WGSL kernel per parameter tensor, no CPU round trip),
// plain SGD, and StepLR. Optimizer state can be saved and restored so training resumes exactly.
import { ADAM_WORKGROUP, adamKernel } from '../../kernels/adam.wgsl.ts';
import { elementLoads, grid1d } from '../../kernels/flat-index.ts';
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
  loadState(steps: number, state: Map<string, Float32Array>): void;
}

export class Adam implements Optimizer {
  lr: number;
  readonly beta1: number;
  readonly beta2: number;
  readonly eps: number;
  readonly weightDecay: number;
  private t = 0;
  private moments = new Map<string, { m: Tensor; v: Tensor }>();

  constructor(private engine: Engine, private params: Map<string, Tensor>, opts: AdamOptions) {
    this.lr = opts.lr;
    [this.beta1, this.beta2] = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0;
    for (const p of params.values()) p.requiresGrad = true;
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
    const bc1 = 1 - this.beta1 ** this.t;
    const bc2 = 1 - this.beta2 ** this.t;
    for (const [name, p] of this.params) {
      if (!p.grad) continue;
      const { m, v } = this.momentsOf(name, p);
      const { vec4, count: n } = elementLoads(p.size);
      this.engine.dispatch({
        kernel: adamKernel(vec4),
        bindings: [p, p.grad, m, v],
        params: { n, beta1: this.beta1, beta2: this.beta2, eps: this.eps, stepSize: this.lr / bc1, sqrtBiasCorrection2: Math.sqrt(bc2), weightDecay: this.weightDecay },
        workgroups: grid1d(n, ADAM_WORKGROUP),
      });
    }
  }

  zeroGrad(): void {
    for (const p of this.params.values()) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  state(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    for (const [name, { m, v }] of this.moments) {
      out.set(`exp_avg.${name}`, m);
      out.set(`exp_avg_sq.${name}`, v);
    }
    return out;
  }

  loadState(steps: number, state: Map<string, Float32Array>): void {
    this.t = steps;
    for (const [name, p] of this.params) {
      const m = state.get(`exp_avg.${name}`);
      const v = state.get(`exp_avg_sq.${name}`);
      if (!m || !v) continue;
      const mv = this.momentsOf(name, p);
      this.engine.writeBuffer(mv.m.buffer, 0, m);
      this.engine.writeBuffer(mv.v.buffer, 0, v);
    }
  }
}

/** Plain SGD (no momentum), as the released diffssl scripts train: p ← p − lr·(g + wd·p). */
export class Sgd implements Optimizer {
  private t = 0;
  constructor(private engine: Engine, private params: Map<string, Tensor>, public lr: number, private weightDecay = 0) {
    for (const p of params.values()) p.requiresGrad = true;
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

  state(): Map<string, Tensor> {
    return new Map();
  }

  loadState(steps: number): void {
    this.t = steps;
  }
}

/** StepLR: lr = base · γ^⌊epoch / stepSize⌋ (paper: step 7, γ 0.1). */
export class StepLR {
  constructor(private optimizer: Optimizer, readonly baseLr: number, readonly stepSize = 7, readonly gamma = 0.1) {}

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

  state(): Map<string, Tensor> {
    const out = new Map<string, Tensor>();
    this.groups.forEach((g, i) => {
      for (const [k, v] of g.state()) out.set(`group${i}.${k}`, v);
    });
    return out;
  }

  loadState(steps: number, state: Map<string, Float32Array>): void {
    this.groups.forEach((g, i) => {
      const mine = new Map<string, Float32Array>();
      for (const [k, v] of state) if (k.startsWith(`group${i}.`)) mine.set(k.slice(`group${i}.`.length), v);
      g.loadState(steps, mine);
    });
  }
}
