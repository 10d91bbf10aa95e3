// Reverse-mode autograd: ops append nodes to a tape while recording is on; backward() walks the
// tape from a scalar, accumulates gradients, and releases what each node saved once it has run.

import type { Engine } from './engine.ts';
import { add, fillConstant } from './ops/elementwise.ts';
import { shapeString, type Tensor } from './tensor.ts';

/** Gradients of an op's inputs (null where an input needs none) from its outputs' gradients. */
export type BackwardRule = (gradOutputs: (Tensor | null)[]) => (Tensor | null)[];

interface TapeNode {
  op: string;
  inputs: Tensor[];
  outputs: Tensor[];
  saved: Tensor[];
  backward: BackwardRule;
}

export class Tape {
  private nodes: TapeNode[] = [];
  /** Inputs that no recorded op produced (parameters, user inputs) and that want a gradient. */
  private leaves = new Map<number, Tensor>();
  private produced = new Set<number>();
  private pauseDepth = 0;

  constructor(private engine: Engine) {}

  get recording(): boolean {
    return this.pauseDepth === 0;
  }

  get length(): number {
    return this.nodes.length;
  }

  paused<T>(fn: () => T): T {
    this.pauseDepth++;
    try {
      return fn();
    } finally {
      this.pauseDepth--;
    }
  }

  /** True when an op on these inputs must be recorded. */
  needsGrad(inputs: readonly Tensor[]): boolean {
    return this.recording && inputs.some((t) => t.requiresGrad);
  }

  /**
   * Records an op. `saved` are the tensors `backward` reads; they stay alive (even past the user's
   * dispose()) until the node has run or the tape is cleared.
   */
  record(op: string, inputs: Tensor[], outputs: Tensor[], saved: Tensor[], backward: BackwardRule): void {
    if (!this.needsGrad(inputs)) return;
    for (const t of inputs) if (t.requiresGrad && !this.produced.has(t.id)) this.leaves.set(t.id, t);
    for (const o of outputs) {
      o.requiresGrad = true;
      this.produced.add(o.id);
    }
    for (const s of saved) s.hold();
    this.nodes.push({ op, inputs, outputs, saved, backward });
  }

  /**
   * Back-propagates from `root` (a scalar unless `seed`, its cotangent, is given). Leaves get their
   * gradient added to `.grad` (as in PyTorch: zero or dispose grads between steps).
   */
  backward(root: Tensor, seed?: Tensor): void {
    const e = this.engine;
    if (!seed && root.size !== 1) {
      throw new Error(`backward() needs a scalar or an explicit gradient; got ${root.label} ${shapeString(root.shape)}`);
    }
    if (seed && seed.size !== root.size) {
      throw new Error(`backward(): gradient ${shapeString(seed.shape)} does not match ${root.label} ${shapeString(root.shape)}`);
    }
    if (!this.produced.has(root.id)) {
      throw new Error(`backward(): ${root.label} does not depend on any tensor that requires grad`);
    }
    const grads = new Map<number, Tensor>();
    const owned = (g: Tensor) => g !== seed;
    e.noGrad(() => {
      grads.set(root.id, seed ?? e.keep(fillConstant(e, root.shape, 1)));
      for (let i = this.nodes.length - 1; i >= 0; i--) {
        const node = this.nodes[i];
        const gOut = node.outputs.map((o) => grads.get(o.id) ?? null);
        if (gOut.some((g) => g !== null)) {
          const gIn = e.tidy(() => node.backward(gOut));
          // A rule may pass a gradient through (add) or give one tensor to two inputs: each
          // gradient held below must be its own object, so repeats become views.
          const taken = new Set<Tensor>(gOut.filter((g): g is Tensor => g !== null));
          node.inputs.forEach((input, k) => {
            let g = gIn[k];
            if (!g) return;
            if (taken.has(g)) g = e.keep(e.view(g, g.shape));
            taken.add(g);
            if (!input.requiresGrad) return void g.dispose();
            if (g.size !== input.size) {
              throw new Error(`internal: ${node.op} backward gave ${shapeString(g.shape)} for input ${shapeString(input.shape)}`);
            }
            if (g.rank !== input.rank || g.shape.some((d, i) => d !== input.shape[i])) {
              const v = e.keep(e.view(g, input.shape));
              g.dispose();
              g = v;
            }
            const prev = grads.get(input.id);
            grads.set(input.id, prev ? this.sum(prev, g) : g);
          });
          for (const o of node.outputs) {
            const g = grads.get(o.id);
            if (g && owned(g)) g.dispose();
            grads.delete(o.id);
          }
        }
        for (const s of node.saved) s.unhold();
      }
      for (const [id, g] of grads) {
        const leaf = this.leaves.get(id);
        if (!leaf) {
          if (owned(g)) g.dispose();
          continue;
        }
        const shaped = e.view(g, leaf.shape, `grad(${leaf.label})`);
        e.keep(shaped);
        g.dispose();
        leaf.grad = leaf.grad ? this.sum(leaf.grad, shaped) : shaped;
      }
    });
    this.reset();
  }

  /** Drops every recorded node (e.g. after a forward pass whose gradients are not wanted). */
  clear(): void {
    for (const n of this.nodes) for (const s of n.saved) s.unhold();
    this.reset();
  }

  private reset(): void {
    this.nodes = [];
    this.leaves.clear();
    this.produced.clear();
  }

  /** a + b as a new tensor outside any tidy scope; a and b are released. */
  private sum(a: Tensor, b: Tensor): Tensor {
    const e = this.engine;
    const s = e.keep(add(a, b));
    a.dispose();
    b.dispose();
    return s;
  }
}
