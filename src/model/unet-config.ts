// guided-diffusion's create_model flags → the U-Net's block plan, state_dict key → shape table and
// diffssl block numbering. Mirrors UNetModel.__init__ (guided_diffusion/unet.py:480-616).

/** Flags mean what they mean to guided-diffusion's create_model (script_util.py), defaults included. */
export interface UNetFlags {
  image_size: number;
  num_channels: number;
  num_res_blocks: number;
  /** "" (the default for the image size), "1,1,2,2,4,4", or numbers. */
  channel_mult?: string | number[];
  /** Resolutions with attention, e.g. "32,16,8" (converted to downsampling factors); unset: "16"; "": only the middle block. */
  attention_resolutions?: string;
  num_heads?: number;
  num_head_channels?: number;
  num_heads_upsample?: number;
  learn_sigma?: boolean;
  use_scale_shift_norm?: boolean;
  /**
   * true: ResBlocks with down/up flags resample (the ADM checkpoints). false or unset (create_model's
   * default; improved-diffusion has no other kind): conv resamplers, Downsample = 3×3 stride-2 conv
   * `op`, Upsample = nearest ×2 then 3×3 conv `conv`.
   */
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
  | { kind: 'attn'; prefix: string; channels: number; heads: number; legacy: boolean }
  /** guided-diffusion's Downsample(conv_resample=True): 3×3 conv, stride 2, padding 1. */
  | { kind: 'down'; prefix: string; channels: number }
  /** guided-diffusion's Upsample(conv_resample=True): nearest ×2, then a 3×3 conv. */
  | { kind: 'up'; prefix: string; channels: number };

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
  if (!m) throw new UNetConfigError(`unsupported image_size ${imageSize} without an explicit channel_mult (guided-diffusion knows 64, 128, 256, 512)`);
  return m;
}

export class UNetConfigError extends Error {
  constructor(detail: string) {
    super(`U-Net config: ${detail}`);
    this.name = 'UNetConfigError';
  }
}

/**
 * Bounds on every size a config sets, checked before anything is allocated. Generous (the 512×512
 * ADM model fits with room to spare) but finite, so a typo cannot ask for terabytes.
 */
const UNET_LIMITS = {
  image_size: { min: 8, max: 1024 },
  in_channels: { min: 1, max: 64 },
  num_channels: { min: 32, max: 1024 },
  num_res_blocks: { min: 1, max: 16 },
  /** Resolution levels (entries of channel_mult). */
  levels: { min: 1, max: 8 },
  /** Channels of any level (channel_mult × num_channels). */
  levelChannels: { max: 2048 },
  num_heads: { min: 1, max: 64 },
  num_head_channels: { min: 1, max: 2048 },
  /** Parameters of the whole model: 2·10⁹ f32 values are 8 GB. */
  parameters: 2e9,
} as const;

/** GroupNorm32 normalises every U-Net activation in 32 groups: channel counts are multiples of 32. */
const GROUPS = 32;

const show = (v: unknown) => (typeof v === 'string' ? JSON.stringify(v) : String(v));

function integerIn(field: string, v: unknown, min: number, max: number, note = ''): number {
  if (v === undefined) throw new UNetConfigError(`${field} is missing: give it as an integer from ${min} to ${max}${note}`);
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new UNetConfigError(`${field} ${show(v)} is out of range: it must be an integer from ${min} to ${max}${note}`);
  }
  return v;
}

/** -1 (guided-diffusion's "not set") or an integer in [min, max]. */
function unsetOrIn(field: string, v: unknown, min: number, max: number): number {
  return v === undefined || v === -1 ? -1 : integerIn(field, v, min, max, ' (or -1 for unset)');
}

function checkBoolean(field: string, v: unknown): void {
  if (v !== undefined && typeof v !== 'boolean') throw new UNetConfigError(`${field} ${show(v)} must be true or false`);
}

/** A comma-separated list of positive integers (guided-diffusion parses both lists with int()). */
function positiveIntegers(field: string, v: unknown, example: string): number[] {
  const text = typeof v === 'number' ? String(v) : v;
  const parts = Array.isArray(text) ? text.map(String) : typeof text === 'string' ? text.split(',').map((s) => s.trim()).filter((s) => s !== '') : undefined;
  const bad = parts === undefined ? show(v) : parts.find((s) => !/^[1-9]\d*$/.test(s));
  if (bad !== undefined) throw new UNetConfigError(`${field} ${show(v)} must be a comma-separated list of positive integers like "${example}" (got ${bad})`);
  return parts!.map(Number);
}

function channelMultOf(f: UNetFlags): number[] {
  if (f.channel_mult === undefined || f.channel_mult === '') return defaultChannelMult(f.image_size);
  const mult = positiveIntegers('channel_mult', f.channel_mult, '1,2,2,4');
  const { min, max } = UNET_LIMITS.levels;
  if (mult.length < min || mult.length > max) throw new UNetConfigError(`channel_mult ${show(f.channel_mult)} has ${mult.length} levels; from ${min} to ${max} are allowed`);
  return mult;
}

/** create_model's flags (guided_diffusion/script_util.py), and in_channels (UNetModel's; create_model fixes it at 3). */
const MODEL_FLAGS: readonly (keyof UNetFlags)[] = [
  'image_size', 'num_channels', 'num_res_blocks', 'channel_mult', 'attention_resolutions', 'num_heads', 'num_head_channels',
  'num_heads_upsample', 'learn_sigma', 'use_scale_shift_norm', 'resblock_updown', 'use_new_attention_order', 'class_cond',
  'dropout', 'use_fp16', 'use_checkpoint', 'in_channels',
];

/**
 * guided-diffusion's diffusion flags (diffusion_defaults), which a config may carry beside the
 * model's: accepted at the values difrep implements, since feature extraction, sampling and
 * pretraining all assume its linear schedule over T = 1000 steps, ε prediction and default
 * variances. Another value would be computed as if it were these.
 */
const DIFFUSION_FLAGS: Record<string, { ok: (v: unknown) => boolean; expected: string }> = {
  diffusion_steps: { ok: (v) => v === 1000, expected: '1000' },
  noise_schedule: { ok: (v) => v === 'linear', expected: '"linear"' },
  timestep_respacing: { ok: (v) => v === '', expected: '"" (difrep samples fewer steps with --ddim-steps)' },
  predict_xstart: { ok: (v) => v === false, expected: 'false (the model predicts ε)' },
  // t·1000/T: the identity at T = 1000.
  rescale_timesteps: { ok: (v) => typeof v === 'boolean', expected: 'true or false' },
  sigma_small: { ok: (v) => v === false, expected: 'false (the sampler\'s fixed variance is β_t)' },
  use_kl: { ok: (v) => v === false, expected: 'false (pretraining minimises the MSE of ε)' },
  rescale_learned_sigmas: { ok: (v) => typeof v === 'boolean', expected: 'true or false' },
};

/** Edit distance, for "did you mean" on a misspelt flag. */
function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row.push(Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1)));
    prev = row;
  }
  return prev[b.length];
}

/**
 * Every key must be a flag: one guided-diffusion knows under another spelling would otherwise be
 * dropped without a word (num_head_channel: 16 built 1-head attention from weights of 2–4 heads,
 * no shape differing), and a diffusion flag at a value difrep does not implement is refused.
 */
function checkKeys(input: object): void {
  for (const [k, v] of Object.entries(input)) {
    if ((MODEL_FLAGS as readonly string[]).includes(k)) continue;
    const diffusion = DIFFUSION_FLAGS[k];
    if (diffusion) {
      if (!diffusion.ok(v)) throw new UNetConfigError(`${k} ${show(v)} is not supported: difrep implements ${k} ${diffusion.expected}`);
      continue;
    }
    const known = [...MODEL_FLAGS, ...Object.keys(DIFFUSION_FLAGS)];
    const near = known.map((name) => ({ name, d: editDistance(k, name) })).sort((a, b) => a.d - b.d)[0];
    const hint = near.d <= 3 ? `did you mean ${near.name}? ` : '';
    throw new UNetConfigError(`unknown flag ${JSON.stringify(k)}: ${hint}the flags are create_model's (${MODEL_FLAGS.join(', ')}) and guided-diffusion's diffusion flags (${Object.keys(DIFFUSION_FLAGS).join(', ')})`);
  }
}

/** Checks every flag against its type and range; the flags with defaults and the parsed lists. */
function checkFlags(input: UNetFlags) {
  checkKeys(input);
  const f = { in_channels: 3, ...input };
  const L = UNET_LIMITS;
  const imageSize = integerIn('image_size', f.image_size, L.image_size.min, L.image_size.max);
  if ((imageSize & (imageSize - 1)) !== 0) throw new UNetConfigError(`image_size ${imageSize} must be a power of two from ${L.image_size.min} to ${L.image_size.max}`);
  integerIn('in_channels', f.in_channels, L.in_channels.min, L.in_channels.max);
  const mc = integerIn('num_channels', f.num_channels, L.num_channels.min, L.num_channels.max);
  if (mc % GROUPS !== 0) throw new UNetConfigError(`num_channels ${mc} must be a multiple of ${GROUPS} (GroupNorm's ${GROUPS} groups) from ${L.num_channels.min} to ${L.num_channels.max}`);
  integerIn('num_res_blocks', f.num_res_blocks, L.num_res_blocks.min, L.num_res_blocks.max);
  for (const k of ['learn_sigma', 'use_scale_shift_norm', 'resblock_updown', 'use_new_attention_order', 'class_cond', 'use_fp16', 'use_checkpoint'] as const) checkBoolean(k, f[k]);
  // 1 is refused, not run: it zeroes every ResBlock's hidden activations in training (the dropout op takes p < 1).
  if (f.dropout !== undefined && !(typeof f.dropout === 'number' && f.dropout >= 0 && f.dropout < 1)) {
    throw new UNetConfigError(`dropout ${show(f.dropout)} must be a number from 0 to below 1`);
  }
  if (f.class_cond) throw new UNetConfigError('class_cond models (label_emb) are not supported: the paper uses the unconditional model');
  const mult = channelMultOf(f);
  mult.forEach((m, level) => {
    const ch = Math.trunc(m * mc);
    if (ch < GROUPS || ch % GROUPS !== 0 || ch > L.levelChannels.max) {
      throw new UNetConfigError(`level ${level} has channel_mult ${m} × num_channels ${mc} = ${ch} channels; it must be a multiple of ${GROUPS} from ${GROUPS} to ${L.levelChannels.max}`);
    }
  });
  if (imageSize >> (mult.length - 1) < 1) throw new UNetConfigError(`image_size ${imageSize} cannot be halved ${mult.length - 1} times (channel_mult has ${mult.length} levels)`);
  const attentionResolutions = positiveIntegers('attention_resolutions', f.attention_resolutions ?? '16', '32,16,8');
  const numHeads = f.num_heads === undefined ? 1 : integerIn('num_heads', f.num_heads, L.num_heads.min, L.num_heads.max);
  const headChannels = unsetOrIn('num_head_channels', f.num_head_channels, L.num_head_channels.min, L.num_head_channels.max);
  const upsampleHeads = unsetOrIn('num_heads_upsample', f.num_heads_upsample, L.num_heads.min, L.num_heads.max);
  return { f, mult, attentionResolutions, numHeads, headChannels, numHeadsUp: upsampleHeads === -1 ? numHeads : upsampleHeads };
}

export function planUNet(input: UNetFlags): UNetPlan {
  const { f, mult, attentionResolutions, numHeads, headChannels, numHeadsUp } = checkFlags(input);
  // guided-diffusion: attention_ds = image_size // resolution; a level has attention when its ds is listed.
  const attentionDs = new Set(attentionResolutions.map((r) => Math.floor(f.image_size / r)));
  const mc = f.num_channels;
  const legacy = !f.use_new_attention_order;
  const resblockUpdown = f.resblock_updown ?? false;
  const headsFor = (ch: number, up: boolean) => {
    if (headChannels === -1) {
      const heads = up ? numHeadsUp : numHeads;
      if (ch % heads !== 0) throw new UNetConfigError(`${ch} channels do not split into ${up ? 'num_heads_upsample' : 'num_heads'} ${heads} heads`);
      return heads;
    }
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
      const prefix = `input_blocks.${i}.0`;
      const down: Layer = resblockUpdown ? { kind: 'res', prefix, cin: ch, cout: ch, down: true, up: false } : { kind: 'down', prefix, channels: ch };
      blocks.push({ b: i + 1, module: `input_blocks.${i}`, layers: [down], outChannels: ch, size });
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
        const upPrefix = `${prefix}.${layers.length}`;
        layers.push(resblockUpdown ? { kind: 'res', prefix: upPrefix, cin: ch, cout: ch, down: false, up: true } : { kind: 'up', prefix: upPrefix, channels: ch });
        ds /= 2;
        size *= 2;
      }
      const b = blocks.length + 1;
      blocks.push({ b, module: prefix, layers, skipFrom: 2 * nIn + 2 - b, outChannels: ch, size });
      j++;
    }
  }
  const plan: UNetPlan = {
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
  const parameters = [...stateDictShapes(plan).values()].reduce((n, shape) => n + shape.reduce((p, d) => p * d, 1), 0);
  if (parameters > UNET_LIMITS.parameters) {
    throw new UNetConfigError(`${parameters.toLocaleString('en')} parameters (${(parameters * 4 / 1e9).toFixed(1)} GB as f32), more than the ${UNET_LIMITS.parameters.toLocaleString('en')} allowed: lower num_channels, channel_mult or num_res_blocks`);
  }
  return plan;
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
      } else if (l.kind === 'down') {
        m.set(`${p}.op.weight`, [l.channels, l.channels, 3, 3]);
        m.set(`${p}.op.bias`, [l.channels]);
      } else if (l.kind === 'up') {
        m.set(`${p}.conv.weight`, [l.channels, l.channels, 3, 3]);
        m.set(`${p}.conv.bias`, [l.channels]);
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
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw new UNetConfigError(`config must be a JSON object of create_model flags, got ${json.slice(0, 40)}`);
  return raw as unknown as UNetFlags;
}

/**
 * Where the network that a checkpoint's recorded `config` metadata (create_model's flags: the
 * reference dumps and difrep's own weights carry one) builds differs from `plan`, or undefined when
 * it builds the same one or records none. Some flags change no parameter shape (num_heads against
 * num_head_channels, use_new_attention_order): weights load into the wrong network without a shape
 * error, so this is what catches them. Map sizes are left out: the same network run at another
 * image_size is a deliberate choice. Keys that are neither model nor diffusion flags (a training
 * script's lr or batch_size, saved beside them) are left out; a recorded config that does not
 * parse, or plans no U-Net difrep builds (a diffusion flag at a value difrep does not implement,
 * such as noise_schedule "cosine"), throws a UNetConfigError saying why: comparing nothing would
 * load the weights unchecked.
 */
export function recordedConfigDifference(plan: UNetPlan, recorded: string | undefined): string | undefined {
  if (recorded === undefined) return undefined;
  const flags = flagsFromJson(recorded) as unknown as Record<string, unknown>;
  const known = new Set<string>([...MODEL_FLAGS, ...Object.keys(DIFFUSION_FLAGS)]);
  const other = planUNet(Object.fromEntries(Object.entries(flags).filter(([k]) => known.has(k))) as unknown as UNetFlags);
  const network = (p: UNetPlan) => ({
    in_channels: p.flags.in_channels, timeEmbedDim: p.timeEmbedDim, outChannels: p.outChannels, finalChannels: p.finalChannels, useScaleShiftNorm: p.useScaleShiftNorm,
    blocks: p.blocks.length,
  });
  const [given, stored] = [JSON.stringify(network(plan)), JSON.stringify(network(other))];
  if (given !== stored) return `the network: ${given} here, ${stored} recorded`;
  const layers = (b: Block) => JSON.stringify({ module: b.module, skipFrom: b.skipFrom, outChannels: b.outChannels, layers: b.layers });
  for (let i = 0; i < plan.blocks.length; i++) {
    const [a, b] = [layers(plan.blocks[i]), layers(other.blocks[i])];
    if (a !== b) return `block ${plan.blocks[i].b} (${plan.blocks[i].module}): ${a} here, ${b} recorded`;
  }
  return undefined;
}
