// guided-diffusion's create_model flags → the U-Net's block plan, state_dict key → shape table and
// diffssl block numbering. Mirrors UNetModel.__init__ (guided_diffusion/unet.py:480-616).

export interface UNetFlags {
  image_size: number;
  num_channels: number;
  num_res_blocks: number;
  /** "" (the default for the image size), "1,1,2,2,4,4", or numbers. */
  channel_mult?: string | number[];
  /** Resolutions with attention, e.g. "32,16,8" (converted to downsampling factors). */
  attention_resolutions?: string;
  num_heads?: number;
  num_head_channels?: number;
  num_heads_upsample?: number;
  learn_sigma?: boolean;
  use_scale_shift_norm?: boolean;
  resblock_updown?: boolean;
  use_new_attention_order?: boolean;
  class_cond?: boolean;
  dropout?: number;
  use_fp16?: boolean;
  use_checkpoint?: boolean;
  in_channels?: number;
}

/** The 256×256 unconditional ADM checkpoint's flags (the paper's backbone). */
export const ADM_256_UNCOND: UNetFlags = {
  image_size: 256, num_channels: 256, num_res_blocks: 2, channel_mult: '', attention_resolutions: '32,16,8',
  num_heads: 4, num_head_channels: 64, num_heads_upsample: -1, learn_sigma: true, use_scale_shift_norm: true,
  resblock_updown: true, use_new_attention_order: false, class_cond: false, dropout: 0, use_fp16: true,
};

export type Layer =
  | { kind: 'conv'; prefix: string; cin: number; cout: number }
  | { kind: 'res'; prefix: string; cin: number; cout: number; down: boolean; up: boolean }
  | { kind: 'attn'; prefix: string; channels: number; heads: number; legacy: boolean };

export interface Block {
  /** diffssl block number b (1-based). */
  b: number;
  /** state_dict prefix: input_blocks.i, middle_block, output_blocks.j */
  module: string;
  layers: Layer[];
  /** For decoder blocks: the encoder block whose output is concatenated first. */
  skipFrom?: number;
  outChannels: number;
  /** Output resolution. */
  size: number;
}

export interface UNetPlan {
  flags: Required<Pick<UNetFlags, 'image_size' | 'num_channels' | 'num_res_blocks' | 'in_channels'>> & UNetFlags;
  channelMult: number[];
  modelChannels: number;
  timeEmbedDim: number;
  outChannels: number;
  blocks: Block[];
  /** Number of input blocks N_in; the middle block is N_in + 1; N = 2·N_in + 1. */
  numInputBlocks: number;
  /** Channels of the final `out` layer's input. */
  finalChannels: number;
  useScaleShiftNorm: boolean;
}

function defaultChannelMult(imageSize: number): number[] {
  const table: Record<number, number[]> = {
    512: [0.5, 1, 1, 2, 2, 4, 4],
    256: [1, 1, 2, 2, 4, 4],
    128: [1, 1, 2, 3, 4],
    64: [1, 2, 3, 4],
  };
  const m = table[imageSize];
  if (!m) throw new Error(`unsupported image_size ${imageSize} without an explicit channel_mult (guided-diffusion knows 64, 128, 256, 512)`);
  return m;
}

export class UNetConfigError extends Error {
  constructor(detail: string) {
    super(`U-Net config: ${detail}`);
    this.name = 'UNetConfigError';
  }
}

export function planUNet(input: UNetFlags): UNetPlan {
  const f = { in_channels: 3, ...input };
  for (const k of ['image_size', 'num_channels', 'num_res_blocks'] as const) {
    if (!Number.isInteger(f[k]) || f[k] <= 0) throw new UNetConfigError(`${k} must be a positive integer, got ${f[k]}`);
  }
  if (f.class_cond) throw new UNetConfigError('class_cond models (label_emb) are not supported: the paper uses the unconditional model');
  if (f.resblock_updown === false) {
    throw new UNetConfigError('resblock_updown=False (conv resamplers) is not supported; the ADM checkpoints use resblock_updown=True');
  }
  const mult = typeof f.channel_mult === 'string'
    ? (f.channel_mult === '' ? defaultChannelMult(f.image_size) : f.channel_mult.split(',').map(Number))
    : f.channel_mult ?? defaultChannelMult(f.image_size);
  if (mult.some((m) => !(m > 0))) throw new UNetConfigError(`bad channel_mult ${f.channel_mult}`);
  const attentionDs = new Set((f.attention_resolutions ?? '').split(',').filter((s) => s.trim() !== '').map((r) => f.image_size / Number(r)));
  const mc = f.num_channels;
  const numHeads = f.num_heads ?? 1;
  const headChannels = f.num_head_channels ?? -1;
  const numHeadsUp = f.num_heads_upsample === undefined || f.num_heads_upsample === -1 ? numHeads : f.num_heads_upsample;
  const legacy = !f.use_new_attention_order;
  const headsFor = (ch: number, up: boolean) => {
    if (headChannels === -1) return up ? numHeadsUp : numHeads;
    if (ch % headChannels !== 0) throw new UNetConfigError(`${ch} channels are not a multiple of num_head_channels ${headChannels}`);
    return ch / headChannels;
  };

  const blocks: Block[] = [];
  let ch = Math.trunc(mult[0] * mc);
  const inputCh = ch;
  let size = f.image_size;
  let ds = 1;
  blocks.push({ b: 1, module: 'input_blocks.0', layers: [{ kind: 'conv', prefix: 'input_blocks.0.0', cin: f.in_channels, cout: ch }], outChannels: ch, size });
  const skipChannels = [ch];
  mult.forEach((m, level) => {
    for (let r = 0; r < f.num_res_blocks; r++) {
      const i = blocks.length;
      const cout = Math.trunc(m * mc);
      const layers: Layer[] = [{ kind: 'res', prefix: `input_blocks.${i}.0`, cin: ch, cout, down: false, up: false }];
      ch = cout;
      if (attentionDs.has(ds)) layers.push({ kind: 'attn', prefix: `input_blocks.${i}.1`, channels: ch, heads: headsFor(ch, false), legacy });
      blocks.push({ b: i + 1, module: `input_blocks.${i}`, layers, outChannels: ch, size });
      skipChannels.push(ch);
    }
    if (level !== mult.length - 1) {
      const i = blocks.length;
      size /= 2;
      if (!Number.isInteger(size)) throw new UNetConfigError(`image_size ${f.image_size} cannot be halved ${mult.length - 1} times`);
      blocks.push({ b: i + 1, module: `input_blocks.${i}`, layers: [{ kind: 'res', prefix: `input_blocks.${i}.0`, cin: ch, cout: ch, down: true, up: false }], outChannels: ch, size });
      skipChannels.push(ch);
      ds *= 2;
    }
  });
  const nIn = blocks.length;
  blocks.push({
    b: nIn + 1,
    module: 'middle_block',
    layers: [
      { kind: 'res', prefix: 'middle_block.0', cin: ch, cout: ch, down: false, up: false },
      { kind: 'attn', prefix: 'middle_block.1', channels: ch, heads: headsFor(ch, false), legacy },
      { kind: 'res', prefix: 'middle_block.2', cin: ch, cout: ch, down: false, up: false },
    ],
    outChannels: ch,
    size,
  });
  let j = 0;
  for (let level = mult.length - 1; level >= 0; level--) {
    for (let r = 0; r <= f.num_res_blocks; r++) {
      const ich = skipChannels.pop()!;
      const cout = Math.trunc(mult[level] * mc);
      const prefix = `output_blocks.${j}`;
      const layers: Layer[] = [{ kind: 'res', prefix: `${prefix}.0`, cin: ch + ich, cout, down: false, up: false }];
      ch = cout;
      if (attentionDs.has(ds)) layers.push({ kind: 'attn', prefix: `${prefix}.${layers.length}`, channels: ch, heads: headsFor(ch, true), legacy });
      if (level && r === f.num_res_blocks) {
        layers.push({ kind: 'res', prefix: `${prefix}.${layers.length}`, cin: ch, cout: ch, down: false, up: true });
        ds /= 2;
        size *= 2;
      }
      const b = blocks.length + 1;
      blocks.push({ b, module: prefix, layers, skipFrom: 2 * nIn + 2 - b, outChannels: ch, size });
      j++;
    }
  }
  return {
    flags: f,
    channelMult: mult,
    modelChannels: mc,
    timeEmbedDim: 4 * mc,
    outChannels: f.learn_sigma ? 2 * f.in_channels : f.in_channels,
    blocks,
    numInputBlocks: nIn,
    finalChannels: inputCh,
    useScaleShiftNorm: f.use_scale_shift_norm ?? false,
  };
}

/** Every state_dict key of the model with its shape, in construction order. */
export function stateDictShapes(plan: UNetPlan): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const mc = plan.modelChannels;
  const ted = plan.timeEmbedDim;
  m.set('time_embed.0.weight', [ted, mc]);
  m.set('time_embed.0.bias', [ted]);
  m.set('time_embed.2.weight', [ted, ted]);
  m.set('time_embed.2.bias', [ted]);
  for (const block of plan.blocks) {
    for (const l of block.layers) {
      const p = l.prefix;
      if (l.kind === 'conv') {
        m.set(`${p}.weight`, [l.cout, l.cin, 3, 3]);
        m.set(`${p}.bias`, [l.cout]);
      } else if (l.kind === 'res') {
        m.set(`${p}.in_layers.0.weight`, [l.cin]);
        m.set(`${p}.in_layers.0.bias`, [l.cin]);
        m.set(`${p}.in_layers.2.weight`, [l.cout, l.cin, 3, 3]);
        m.set(`${p}.in_layers.2.bias`, [l.cout]);
        const embOut = plan.useScaleShiftNorm ? 2 * l.cout : l.cout;
        m.set(`${p}.emb_layers.1.weight`, [embOut, ted]);
        m.set(`${p}.emb_layers.1.bias`, [embOut]);
        m.set(`${p}.out_layers.0.weight`, [l.cout]);
        m.set(`${p}.out_layers.0.bias`, [l.cout]);
        m.set(`${p}.out_layers.3.weight`, [l.cout, l.cout, 3, 3]);
        m.set(`${p}.out_layers.3.bias`, [l.cout]);
        if (l.cin !== l.cout) {
          m.set(`${p}.skip_connection.weight`, [l.cout, l.cin, 1, 1]);
          m.set(`${p}.skip_connection.bias`, [l.cout]);
        }
      } else {
        m.set(`${p}.norm.weight`, [l.channels]);
        m.set(`${p}.norm.bias`, [l.channels]);
        m.set(`${p}.qkv.weight`, [3 * l.channels, l.channels, 1]);
        m.set(`${p}.qkv.bias`, [3 * l.channels]);
        m.set(`${p}.proj_out.weight`, [l.channels, l.channels, 1]);
        m.set(`${p}.proj_out.bias`, [l.channels]);
      }
    }
  }
  m.set('out.0.weight', [plan.finalChannels]);
  m.set('out.0.bias', [plan.finalChannels]);
  m.set('out.2.weight', [plan.outChannels, plan.finalChannels, 3, 3]);
  m.set('out.2.bias', [plan.outChannels]);
  return m;
}

/** Parses the `config` metadata of a reference dump (JSON of create_model's keyword arguments). */
export function flagsFromJson(json: string): UNetFlags {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(json);
  } catch (e) {
    throw new UNetConfigError(`config is not valid JSON: ${(e as Error).message}`);
  }
  return raw as unknown as UNetFlags;
}
