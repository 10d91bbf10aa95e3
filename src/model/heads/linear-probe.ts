// GD linear probe (diffssl Head): adaptive average pool to k×k, flatten channel-major
// (index c·k² + i·k + j), Linear(C·k² → classes).
import type { Engine } from '../../engine/engine.ts';
import { adaptiveAvgPool2d } from '../../engine/ops/adaptive-pool.ts';
import { reshape } from '../../engine/ops/layout.ts';
import { linear } from '../../engine/ops/nn.ts';
import type { Tensor } from '../../engine/tensor.ts';
import type { TensorSource } from '../checkpoint/tensor-source.ts';
import { fanInBound, initStateDict, loadStateDict, type ParamSpec } from '../state-dict.ts';

export interface LinearProbeOptions {
  channels: number;
  classes: number;
  /** Adaptive pool output size k (paper default 2). */
  pool?: number;
}

export class LinearProbe {
  readonly pool: number;

  private constructor(readonly engine: Engine, readonly options: LinearProbeOptions, readonly params: Map<string, Tensor>) {
    this.pool = options.pool ?? 2;
  }

  static specs(o: LinearProbeOptions): Map<string, ParamSpec> {
    const inF = o.channels * (o.pool ?? 2) ** 2;
    const bound = fanInBound([o.classes, inF]);
    return new Map<string, ParamSpec>([
      ['weight', { shape: [o.classes, inF], init: { uniform: bound } }],
      ['bias', { shape: [o.classes], init: { uniform: bound } }],
    ]);
  }

  static create(e: Engine, o: LinearProbeOptions, seed = 0): LinearProbe {
    return new LinearProbe(e, o, initStateDict(e, LinearProbe.specs(o), seed));
  }

  static async load(e: Engine, o: LinearProbeOptions, source: TensorSource): Promise<LinearProbe> {
    const shapes = new Map([...LinearProbe.specs(o)].map(([k, s]) => [k, s.shape]));
    return new LinearProbe(e, o, await loadStateDict(e, shapes, source, 'linear probe'));
  }

  /** feature [N, C, H, W] → logits [N, classes]. */
  forward(feature: Tensor): Tensor {
    const e = this.engine;
    return e.tidy(() => {
      const pooled = adaptiveAvgPool2d(feature, this.pool);
      const flat = reshape(pooled, [feature.shape[0], -1]);
      return linear(flat, this.params.get('weight')!, this.params.get('bias')!);
    });
  }
}
