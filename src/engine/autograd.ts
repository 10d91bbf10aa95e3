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
  /** Which inputs wanted a gradient when the op was recorded (a flag set later does not reach back). */
  needs: boolean[];
  outputs: Tensor[];
  saved: Tensor[];
  /** The saved tensors' storage versions when the op was recorded. */
  versions: number[];
  backward: BackwardRule;
}

/** Why a tensor whose producing op the tape has dropped cannot take part in a gradient. */
function released(t: Tensor, what: string): string {
  return `${t.label} ${shapeString(t.shape)} was computed before a backward() (or tape.clear()) that released its graph, so ${what}: compute it again after the backward(), or call backward() once on the sum of the losses (the tape is the engine's: another task's backward() on this engine, between this forward and yours, releases it too)`;
}

export class Tape {
  private nodes: TapeNode[] = [];
  /** Inputs that no recorded op produced (parameters, user inputs) and that want a gradient. */
  private leaves = new Map<number, Tensor>();
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
    for (const t of inputs) {
      // An output of a dropped op would otherwise pass for a leaf: the gradient would stop there.
      if (t.tapeState === 'released') throw new Error(released(t, `${op} cannot record it as an input`));
      if (t.requiresGrad && t.tapeState !== 'recorded') this.leaves.set(t.id, t);
    }
    for (const o of outputs) {
      o.requiresGrad = true;
      o.tapeState = 'recorded';
    }
    for (const s of saved) s.hold();
    this.nodes.push({ op, inputs, needs: inputs.map((t) => t.requiresGrad), outputs, saved, versions: saved.map((t) => t.storage.version), backward });
  }

  /**
   * Back-propagates from `root` (a scalar unless `seed`, its cotangent, is given). Leaves get their
   * gradient added to `.grad` (as in PyTorch: zero or dispose grads between steps).
   */
  backward(root: Tensor, seed?: Tensor): void {
    // Tensor ids count per engine: another engine's root would walk this tape's nodes of the same ids.
    this.engine.checkOwn(root, 'backward()');
    if (seed) this.engine.checkOwn(seed, 'backward() gradient');
    if (!seed && root.size !== 1) {
      throw new Error(`backward() needs a scalar or an explicit gradient; got ${root.label} ${shapeString(root.shape)}`);
    }
    // The same shape, not only the same size: the rules broadcast, so a [4, 1] seed of a [1, 4] root
    // would be spread over a 4 × 4 grid and summed away.
    if (seed && (seed.rank !== root.rank || seed.shape.some((d, i) => d !== root.shape[i]))) {
      throw new Error(`backward(): gradient ${shapeString(seed.shape)} does not match ${root.label} ${shapeString(root.shape)}; give it the root's shape`);
    }
    if (root.tapeState === 'released') throw new Error(released(root, 'backward() cannot run through it again'));
    if (root.tapeState !== 'recorded') {
      throw new Error(`backward(): ${root.label} does not depend on any tensor that requires grad`);
    }
    const grads = new Map<number, Tensor>();
    const owned = (g: Tensor) => g !== seed;
    try {
      this.propagate(root, seed, grads, owned);
    } catch (err) {
      // A rule that threw (a binding over the device's limit, say) leaves the tape cleared and
      // every hold released once, so the caller can go on (a retry at a smaller batch).
      for (const g of grads.values()) if (owned(g)) g.dispose();
      throw err;
    } finally {
      for (const node of this.nodes) this.releaseSaved(node);
      this.reset();
    }
  }

  /** backward()'s walk over the nodes, gradients held in `grads`, each node's saved tensors released as it runs. */
  private propagate(root: Tensor, seed: Tensor | undefined, grads: Map<number, Tensor>, owned: (g: Tensor) => boolean): void {
    const e = this.engine;
    e.noGrad(() => {
      grads.set(root.id, seed ?? e.keep(fillConstant(e, root.shape, 1)));
      for (let i = this.nodes.length - 1; i >= 0; i--) {
        const node = this.nodes[i];
        const gOut = node.outputs.map((o) => grads.get(o.id) ?? null);
        if (gOut.some((g) => g !== null)) {
          // PyTorch's "modified by an inplace operation" check: the rule would read other values than the forward did.
          node.saved.forEach((t, k) => {
            if (t.storage.version !== node.versions[k]) {
              throw new Error(`backward of ${node.op}: ${t.label} ${shapeString(t.shape)}, which it needs, was written in place after the forward (an optimizer step, fill(), a load): call backward() before changing the tensors the forward read, or run the forward again`);
            }
          });
          const gIn = e.tidy(() => node.backward(gOut));
          // A rule may pass a gradient through (add) or give one tensor to two inputs: each
          // gradient held below must be its own object, so repeats become views.
          const taken = new Set<Tensor>(gOut.filter((g): g is Tensor => g !== null));
          node.inputs.forEach((input, k) => {
            let g = gIn[k];
            if (!g) return;
            if (taken.has(g)) g = e.keep(e.view(g, g.shape));
            taken.add(g);
            if (!node.needs[k]) return void g.dispose();
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
        this.releaseSaved(node);
      }
      // Storages a leaf's new gradient may not share: the seed's, and other leaves' (add passes one
      // gradient to both its inputs). Writing to one changed the other; PyTorch copies them too.
      const taken = new Set(seed ? [seed.storage] : []);
      for (const [id, g] of grads) {
        const leaf = this.leaves.get(id);
        // A leaf disposed since: its gradient would never be freed (dispose() has run).
        if (!leaf || leaf.isDisposed) {
          if (owned(g)) g.dispose();
          continue;
        }
        let shaped: Tensor;
        if (taken.has(g.storage)) {
          shaped = e.empty(leaf.shape, `grad(${leaf.label})`);
          e.copyBuffer(g.buffer, 0, shaped.buffer, 0, g.byteLength);
        } else {
          shaped = e.view(g, leaf.shape, `grad(${leaf.label})`);
        }
        taken.add(shaped.storage);
        e.keep(shaped);
        if (owned(g)) g.dispose();
        leaf.grad = leaf.grad ? this.sum(leaf.grad, shaped) : shaped;
      }
      grads.clear();
    });
  }

  /** Releases the tensors `node` saved for its rule, once. */
  private releaseSaved(node: TapeNode): void {
    for (const s of node.saved) s.unhold();
    node.saved = [];
  }

  /** Where the tape stands now, for dropSince(). */
  mark(): { nodes: readonly TapeNode[]; length: number } {
    return { nodes: this.nodes, length: this.nodes.length };
  }

  /**
   * Drops the nodes recorded since `mark` (all of the tape's when a backward or clear began it
   * anew since), releasing what they saved, if every output of them is disposed: then no tensor
   * left can reach them (a tidy that threw disposed what it made). Otherwise keeps them all.
   */
  dropSince(mark: { nodes: readonly TapeNode[]; length: number }): void {
    const start = this.nodes === mark.nodes ? mark.length : 0;
    const since = this.nodes.slice(start);
    if (!since.every((n) => n.outputs.every((o) => o.isDisposed))) return;
    for (const n of since) {
      this.releaseSaved(n);
      for (const o of n.outputs) o.tapeState = 'released';
    }
    this.nodes.length = start;
  }

  /** Drops every recorded node (e.g. after a forward pass whose gradients are not wanted). */
  clear(): void {
    for (const n of this.nodes) this.releaseSaved(n);
    this.reset();
  }

  private reset(): void {
    for (const n of this.nodes) for (const o of n.outputs) o.tapeState = 'released';
    this.nodes = [];
    this.leaves.clear();
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
