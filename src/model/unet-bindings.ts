// How many images of a batch the U-Net can run at once: every tensor an op binds holds N images, so
// a chunk of n images fits when n × (the largest binding one image needs) ≤ the largest storage
// binding. The per-image sizes are read off the block plan, tensor by tensor, as the forward in
// unet.ts makes them; the backward binds gradients of the same shapes, plus what the composite
// attention saves.
import { attentionMaterialisesWeights } from '../engine/ops/attention.ts';
import type { Engine } from '../engine/engine.ts';
import { type Layer, stateDictShapes, type UNetPlan } from './unet-config.ts';

/** A storage binding the U-Net needs that the engine cannot give it, with what to do instead. */
export class BindingLimitError extends RangeError {
  constructor(message: string) {
    super(message);
    this.name = 'BindingLimitError';
  }
}

export interface BindingScope {
  /** Blocks 1..last run (the forward stops after the last block asked for). */
  last: number;
  /** The final GroupNorm → SiLU → conv runs. */
  output: boolean;
  /** Ops are recorded for a backward: attention materialises its weights, every tensor gets a gradient of its shape. */
  gradients: boolean;
}

export interface BindingNeed {
  /** Bytes one image adds to the binding. */
  bytesPerImage: number;
  /** Which op's which tensor, e.g. "block 8 (output_blocks.2): the skip concat [96, 32, 32]". */
  what: string;
}

/** The largest binding, per image, of any op the forward (and, with gradients, the backward) runs. */
export function largestBindingPerImage(e: Engine, plan: UNetPlan, scope: BindingScope): BindingNeed {
  let best: BindingNeed = { bytesPerImage: 0, what: '' };
  const need = (where: string, tensor: string, shape: number[]) => {
    const bytes = 4 * shape.reduce((p, d) => p * d, 1);
    if (bytes > best.bytesPerImage) best = { bytesPerImage: bytes, what: `${where}: ${tensor} [${shape.join(', ')}]` };
  };
  const image = plan.flags.image_size;
  need('the input', 'x', [plan.flags.in_channels, image, image]);
  need('the timestep embedding', 'its MLP', [plan.timeEmbedDim]);
  let size = image; // resolution entering the next layer
  for (const block of plan.blocks.slice(0, scope.last)) {
    if (block.skipFrom !== undefined) {
      const channels = plan.blocks[block.b - 2].outChannels + plan.blocks[block.skipFrom - 1].outChannels;
      need(`block ${block.b} (${block.module})`, 'the skip concat', [channels, size, size]);
    }
    for (const layer of block.layers) {
      size = layerNeeds(e, plan, layer, size, scope.gradients, (tensor, shape) => need(`block ${block.b} (${layer.prefix})`, tensor, shape));
    }
  }
  if (scope.output) {
    need('the output layers (out)', 'GroupNorm', [plan.finalChannels, size, size]);
    need('the output layers (out)', 'the prediction', [plan.outChannels, size, size]);
  }
  return best;
}

/** Reports the per-image tensors one layer binds at input resolution `size`; returns its output resolution. */
function layerNeeds(e: Engine, plan: UNetPlan, l: Layer, size: number, gradients: boolean, need: (tensor: string, shape: number[]) => void): number {
  switch (l.kind) {
    case 'conv':
      need('the input', [l.cin, size, size]);
      need('the output', [l.cout, size, size]);
      return size;
    case 'res': {
      // x and GN(x) at the input size; avgPool2/upsample2 of both; then in_layers' conv, the
      // out_layers' GroupNorm, the skip conv and the sum, all [cout] at the output size.
      const out = l.down ? size / 2 : l.up ? size * 2 : size;
      need('the input', [l.cin, size, size]);
      if (out !== size) need('the resampled input', [l.cin, out, out]);
      need('the output', [l.cout, out, out]);
      need('the embedding projection', [(plan.useScaleShiftNorm ? 2 : 1) * l.cout]);
      return out;
    }
    case 'attn': {
      const T = size * size;
      need('the input', [l.channels, size, size]);
      need('qkv', [3 * l.channels, T]);
      if (attentionMaterialisesWeights(e, l.channels / l.heads, gradients, { T, matrices: l.heads })) need('the attention weights', [l.heads, T, T]);
      return size;
    }
    case 'down':
      // A 3×3 stride-2 conv: input at `size`, output at half.
      need('the input', [l.channels, size, size]);
      need('the output', [l.channels, size / 2, size / 2]);
      return size / 2;
    case 'up':
      // Nearest ×2, then a 3×3 conv at the doubled size.
      need('the input', [l.channels, size, size]);
      need('the upsampled input', [l.channels, 2 * size, 2 * size]);
      need('the output', [l.channels, 2 * size, 2 * size]);
      return 2 * size;
    default: {
      const unknown: never = l;
      throw new Error(`internal: no binding sizes for layer ${JSON.stringify(unknown)}`);
    }
  }
}

/**
 * "N bytes (…)": the binding limit in force and where it comes from. The device's limit, which
 * an app that passes its own device set when it requested it (WebGPU's default is 128 MiB).
 */
export function describeBindingLimit(e: Engine): string {
  const device = e.limits.maxStorageBufferBindingSize;
  return e.maxBindingBytes < device
    ? `${e.maxBindingBytes} bytes (the engine's maxBindingBytes; this device's maxStorageBufferBindingSize is ${device})`
    : `${device} bytes (this device's maxStorageBufferBindingSize; difrep's own device asks for its adapter's largest, a device of your app's for what requiredLimits gave it)`;
}

/**
 * How many images one chunk of the forward may hold so that every binding fits. Throws a
 * BindingLimitError when a weight or a single image does not fit: no split of the batch helps then.
 */
export function imagesPerChunk(e: Engine, plan: UNetPlan, scope: BindingScope): number {
  const max = e.maxBindingBytes;
  // Only the weights of the blocks that run are bound: a deep weight over the limit does not stop
  // a forward to a shallow tap.
  const prefixes = plan.blocks.slice(0, scope.last).flatMap((b) => b.layers.map((l) => `${l.prefix}.`));
  const bound = (key: string) => key.startsWith('time_embed.') || (scope.output && key.startsWith('out.')) || prefixes.some((p) => key.startsWith(p));
  for (const [key, shape] of stateDictShapes(plan)) {
    if (!bound(key)) continue;
    const bytes = 4 * shape.reduce((p, d) => p * d, 1);
    if (bytes > max) {
      throw new BindingLimitError(`U-Net parameter ${key} [${shape.join(', ')}] needs a ${bytes}-byte storage binding, over the largest this engine may use, ${describeBindingLimit(e)}; this model cannot run on it at any batch size`);
    }
  }
  const need = largestBindingPerImage(e, plan, scope);
  if (need.bytesPerImage <= max) return Math.floor(max / need.bytesPerImage);
  let why = '';
  if (scope.gradients) {
    const plain = largestBindingPerImage(e, plan, { ...scope, gradients: false });
    if (plain.bytesPerImage <= max) {
      why = ` with gradients recorded (without them one image needs at most ${plain.bytesPerImage} bytes, for ${plain.what}: run under engine.noGrad() if no gradient is wanted)`;
    }
  }
  throw new BindingLimitError(
    `U-Net: one image needs a ${need.bytesPerImage}-byte storage binding for ${need.what}${why}, over the largest this engine may use, ` +
      `${describeBindingLimit(e)}; splitting the batch cannot go below one image. Use a smaller image_size or num_channels, or an adapter with a larger limit`,
  );
}

/**
 * With gradients recorded, a tensor holding the whole batch (the input, a feedback, a joined
 * result) is sliced or joined by ops whose backward binds it whole: it must fit one binding.
 */
export function checkWholeBatchBinding(e: Engine, what: string, bytes: number, images: number, perChunk: number): void {
  if (bytes <= e.maxBindingBytes) return;
  const most = Math.floor(e.maxBindingBytes / (bytes / images));
  throw new BindingLimitError(
    `U-Net forward with gradients recorded: ${what} for ${images} images is ${bytes} bytes, over the largest storage binding, ${describeBindingLimit(e)}. ` +
      `The batch runs in chunks of ${perChunk} images, but a tensor that takes part in the backward is sliced and joined whole: ` +
      `use at most ${most} images per call (or run under engine.noGrad() if no gradient is wanted)`,
  );
}
