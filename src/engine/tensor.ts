// A dense, contiguous (row-major) f32 tensor living in a GPU storage buffer.

import type { Engine } from './engine.ts';

export type Shape = readonly number[];

export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function contiguousStrides(shape: Shape): number[] {
  const strides = new Array<number>(shape.length);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

export function shapeString(shape: Shape): string {
  return `[${shape.join(',')}]`;
}

const MAX_LABEL = 160;

/**
 * Op outputs are labelled after their inputs (`add(scale(x),z)`), so a loop that feeds a result
 * back in would lengthen the label every iteration (doubling it for `add(x, x)`); labels are cut.
 */
export function boundLabel(label: string): string {
  return label.length <= MAX_LABEL ? label : `${label.slice(0, MAX_LABEL - 1)}…`;
}

/** A GPU buffer shared by a tensor and its reshaped views; returned to the pool when the last one goes. */
export class Storage {
  refs = 1;
  /**
   * In-place writes so far (an optimizer step, fill(), a load, BatchNorm's running statistics): the
   * tape refuses a backward that would read a saved tensor of this storage written since its forward.
   */
  version = 0;
  constructor(readonly buffer: GPUBuffer, readonly byteLength: number, private onFree: (b: GPUBuffer) => void) {}

  retain(): void {
    if (this.refs <= 0) throw new Error(`internal: retain of a freed buffer (${this.buffer.label})`);
    this.refs++;
  }

  release(): void {
    if (--this.refs === 0) this.onFree(this.buffer);
  }
}

export class Tensor {
  readonly id: number;
  readonly size: number;
  readonly label: string;
  private needsGradient = false;
  /** Accumulated gradient of a leaf after `backward()`. */
  grad: Tensor | null = null;
  /**
   * Set by the autograd tape: 'recorded' on an output of a recorded op, 'released' once backward()
   * or clear() has dropped that op (a gradient can no longer flow through it).
   */
  tapeState: 'recorded' | 'released' | undefined = undefined;
  private userReleased = false;

  /** Set on parameters (leaves) by the user, and on every output of a recorded op. */
  get requiresGrad(): boolean {
    return this.needsGradient;
  }

  /**
   * Cleared only on a leaf (or an output whose op the tape has dropped): cleared on an output of a
   * recorded op it silently cut the gradient there, and PyTorch refuses it ("you can only change
   * requires_grad flags of leaf variables").
   */
  set requiresGrad(value: boolean) {
    if (!value && this.needsGradient && this.tapeState === 'recorded') {
      throw new Error(`${this.label} ${shapeString(this.shape)} was computed by a recorded op, so its requiresGrad cannot be cleared (the gradient would stop there without a word, as PyTorch refuses too): compute it under engine.noGrad() to record nothing`);
    }
    this.needsGradient = value;
  }
  private freed = false;
  /** Holds by the autograd tape: a tensor saved for backward outlives the user's dispose(). */
  private holds = 0;

  constructor(
    readonly engine: Engine,
    readonly shape: Shape,
    readonly storage: Storage,
    label: string,
  ) {
    this.label = boundLabel(label);
    this.id = engine.nextTensorId();
    this.size = numel(shape);
    engine.track(this);
  }

  get buffer(): GPUBuffer {
    if (this.freed) throw new Error(`tensor "${this.label}" ${shapeString(this.shape)} was used after dispose()`);
    return this.storage.buffer;
  }

  get byteLength(): number {
    return this.size * 4;
  }

  get rank(): number {
    return this.shape.length;
  }

  get strides(): number[] {
    return contiguousStrides(this.shape);
  }

  get isDisposed(): boolean {
    return this.userReleased;
  }

  /** Releases this tensor (and its gradient); idempotent. The buffer returns to the pool once no view and no tape hold needs it. */
  dispose(): void {
    if (this.userReleased) return;
    this.userReleased = true;
    if (this.grad) {
      this.grad.dispose();
      this.grad = null;
    }
    this.freeIfUnused();
  }

  /**
   * Says that this tensor's buffer was written in place (its views' too: they share the storage).
   * Whoever writes a tensor that a recorded op may have saved calls it, so backward() can refuse
   * the stale values instead of returning a gradient of other numbers than the forward used.
   */
  markWritten(): void {
    this.storage.version++;
  }

  /** Called by the autograd tape for tensors a backward rule will read. */
  hold(): void {
    this.holds++;
  }

  unhold(): void {
    if (this.holds <= 0) throw new Error(`internal: ${this.label} ${shapeString(this.shape)} released by the tape more often than it was saved`);
    this.holds--;
    this.freeIfUnused();
  }

  private freeIfUnused(): void {
    if (this.userReleased && this.holds === 0 && !this.freed) {
      this.freed = true;
      this.storage.release();
    }
  }

  /** Copies the values back to the CPU (flushes pending GPU work). */
  async read(): Promise<Float32Array> {
    const bytes = await this.engine.readBuffer(this.buffer, 0, this.byteLength);
    return new Float32Array(bytes);
  }

  /** read(), then dispose(): for a result wanted only on the CPU (a tidy's result outlives the tidy). */
  async readAndDispose(): Promise<Float32Array> {
    try {
      return await this.read();
    } finally {
      this.dispose();
    }
  }

  toString(): string {
    return `Tensor(${this.label} ${shapeString(this.shape)})`;
  }
}
