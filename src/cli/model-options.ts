// Shared by the commands that run a U-Net: which config, which weights.
import { readFile, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { Engine } from '../engine/engine.ts';
import { openCheckpoint, withPrefix } from '../model/checkpoint/index.ts';
import { describeMapping, paperBlocks } from '../model/block-roles.ts';
import { UNet } from '../model/unet.ts';
import { ADM_256_UNCOND, flagsFromJson, planUNet, type UNetFlags } from '../model/unet-config.ts';
import { type OptionSpecs, UsageError } from './args.ts';

export const PRESETS: Record<string, UNetFlags> = {
  adm256: ADM_256_UNCOND,
  adm64: {
    image_size: 64, num_channels: 32, num_res_blocks: 2, channel_mult: '1,1,2,2,2,2', attention_resolutions: '8,4,2',
    num_head_channels: 32, learn_sigma: true, use_scale_shift_norm: true, resblock_updown: true,
  },
  'adm32-mini': {
    image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '2',
    num_head_channels: 32, learn_sigma: true, use_scale_shift_norm: true, resblock_updown: true,
  },
};

export const MODEL_OPTIONS = {
  model: { type: 'string', help: `U-Net config: a preset (${Object.keys(PRESETS).join(', ')}) or a JSON file of create_model flags`, default: 'adm64' },
  checkpoint: { type: 'string', meta: 'FILE', help: 'weights (.pt or .safetensors; a reference dump\'s param.* also works); without it the weights are random (plumbing only)' },
} satisfies OptionSpecs;

/** The weights file's SHA-256, 64 hex digits. */
async function checkpointSha256(path: string): Promise<string> {
  const h = createHash('sha256');
  try {
    for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  } catch (e) {
    throw new UsageError(`--checkpoint ${path}: cannot read it (${(e as Error).message})`);
  }
  return h.digest('hex');
}

/** The first 16 hex digits of the weights' SHA-256 (what feature caches record), or 'random-weights'. */
export async function checkpointHash(path: string | undefined): Promise<string> {
  return path ? (await checkpointSha256(path)).slice(0, 16) : 'random-weights';
}

/** Which file a path names and its state: a file replaced (rename) or rewritten in between reads differently. */
async function fileIdentity(path: string): Promise<string> {
  const st = await stat(path).catch((e: Error) => { throw new UsageError(`--checkpoint ${path}: cannot read it (${e.message})`); });
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}`;
}

/** The create_model flags named by --model: a preset or a JSON file. */
export async function resolveFlags(model: string): Promise<UNetFlags> {
  // Own keys only: "constructor" or "toString" read Object.prototype's and failed as a config.
  let flags = Object.hasOwn(PRESETS, model) ? PRESETS[model] : undefined;
  if (!flags && model.endsWith('.json')) {
    const text = await readFile(model, 'utf8').catch((e: Error) => { throw new UsageError(`--model ${model}: cannot read the config file (${e.message})`); });
    try {
      flags = flagsFromJson(text);
    } catch (e) {
      throw new UsageError(`--model ${model}: ${(e as Error).message}`);
    }
  }
  if (!flags) throw new UsageError(`--model ${model}: not a preset (${Object.keys(PRESETS).join(', ')}) or a .json config`);
  // Every flag is checked (types, ranges, a parameter cap) before anything is allocated or created.
  try {
    planUNet(flags);
  } catch (e) {
    throw new UsageError(`--model ${model}: ${(e as Error).message}`);
  }
  return flags;
}

export interface LoadModelOptions {
  /** Without a checkpoint, start from guided-diffusion's initialisation in this seed (pretraining) instead of plumbing weights. */
  scratchSeed?: number;
  /**
   * --model's flags as the caller already resolved (and recorded) them: the file is not read
   * again, so an edit to it meanwhile cannot make the network differ from the record.
   */
  flags?: UNetFlags;
}

/**
 * The U-Net of --model with the weights of --checkpoint, its flags, the 16-hex `hash` feature caches
 * record ('random-weights' without weights) and the file's full `sha256`.
 */
export async function loadModel(e: Engine, model: string, checkpoint: string | undefined, options: LoadModelOptions = {}): Promise<{ unet: UNet; flags: UNetFlags; hash: string; sha256?: string }> {
  const { scratchSeed } = options;
  const flags = options.flags ?? await resolveFlags(model);
  let unet: UNet;
  let sha256: string | undefined;
  if (checkpoint) {
    // The hash must be of the bytes loaded: a pretraining run replaces ema.safetensors every few
    // minutes, so the file is the same one (inode, size, mtime) from before the load to after the hash.
    const before = await fileIdentity(checkpoint);
    const src = await openCheckpoint(checkpoint);
    try {
      const prefixed = src.keys().some((k) => k.startsWith('param.')) && !src.keys().some((k) => k.startsWith('time_embed.'));
      unet = await UNet.load(e, flags, prefixed ? withPrefix(src, 'param.') : src);
      // No tensor's shape depends on these: only a recorded config (difrep's own files) can check them.
      if (src.metadata.config === undefined) {
        console.error(
          `difrep: ${checkpoint} records no config, so its attention heads are as --model ${model} says, unchecked ` +
            `(num_heads ${flags.num_heads ?? 1}, num_head_channels ${flags.num_head_channels ?? -1}, num_heads_upsample ${flags.num_heads_upsample ?? -1}, ` +
            `use_new_attention_order ${flags.use_new_attention_order ?? false}): give the values the weights were trained with`,
        );
      }
    } finally {
      await src.close();
    }
    sha256 = await checkpointSha256(checkpoint);
    if ((await fileIdentity(checkpoint)) !== before) {
      for (const p of unet.parameters().values()) p.dispose();
      throw new UsageError(`--checkpoint ${checkpoint} changed while it was being read (is a training run rewriting it?): copy it to a file nothing writes to, or run again`);
    }
  } else {
    if (scratchSeed === undefined) console.error('difrep: no --checkpoint given: using random U-Net weights (fine for plumbing, meaningless features)');
    unet = scratchSeed === undefined ? UNet.random(e, flags, 0) : UNet.initial(e, flags, scratchSeed);
  }
  if (paperBlocks(unet.plan).mapped) console.error(`difrep: ${describeMapping(unet.plan)}`);
  return { unet, flags, hash: sha256?.slice(0, 16) ?? 'random-weights', sha256 };
}
