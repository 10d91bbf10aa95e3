// The engine's kernel tuning: the settings that exist, per kernel family, and the check that a
// tuning passed in or read from a file names only those, each a whole number (a switch 0 or 1). Every setting is
// optional; an absent family leaves the built-in choice for the adapter, and a tile family given in
// part takes the sizes it leaves out from the generic tile (DEFAULT_MATMUL_TILING: 8 × 8 threads,
// 8 × 8 outputs each, k 16), which the engine checks against the device.
import type { MatmulTiling } from '../../kernels/matmul.wgsl.ts';

export interface Tuning {
  /**
   * Register tiles of matmul and the Winograd GEMMs (chooseGemmTiling). Given, they also select the
   * register-tiled kernel over the subgroup GEMM.
   */
  matmul?: Partial<MatmulTiling>;
  /**
   * The subgroup GEMM (kernels/matmul-subgroup.wgsl.ts) for matmul and the Winograd GEMMs whose
   * extents allow vec4s: `enabled` 0 turns it off (default: on for CPU adapters whose subgroups are
   * 8 lanes wide, lavapipe; 1 asks for it on any adapter with 8-lane subgroups, an error elsewhere).
   */
  matmulSubgroup?: { enabled?: number };
  /** Register tiles of the direct conv's implicit GEMM, its data and its weight gradient. */
  conv2d?: Partial<MatmulTiling>;
  /**
   * Winograd F(2×2, 3×3) for 3×3 convs: `enabled` 1 or 0 forces it on or off; `minChannels` (default
   * 16) for the forward and input gradient, and the weight gradients that follow them; without
   * `enabled`, lavapipe's weight gradients also take it wherever their GEMMs run on the subgroup
   * kernel, whatever the channels (conv2d.ts, winogradWeightGradient).
   */
  conv2dWinograd?: { enabled?: number; minChannels?: number };
  /** Split-K of the direct conv's weight gradient: about this many workgroups (default 64 on GPUs, 1 on CPU adapters). */
  conv2dWeightGrad?: { splitKWorkgroups?: number };
  /**
   * Row reductions (GroupNorm, LayerNorm, softmax): a thread per row from this many rows (0: always
   * a workgroup per row); `subgroups` 0 combines a workgroup's sums without subgroup operations.
   */
  rows?: { threadPerRowFrom?: number; subgroups?: number };
  /** Sums over contiguous rows: a workgroup per row below this many rows. */
  reduce?: { workgroupPerRowBelow?: number };
  /**
   * Attention under training: `fusedBackward` 1 recomputes the weights in the fused backward
   * kernels (flash-style, no T × T tensor), 0 materialises them through matmul and softmax
   * (default: 1 on GPUs, 0 on CPU adapters, where those GEMMs run faster). Without a gradient:
   * `fusedForward` 1 runs the fused kernel, 0 matmul and softmax (default: 0 where the subgroup
   * GEMM runs them and T is a multiple of 4, lavapipe; 1 elsewhere). Either way the weights are
   * materialised only where they fit a binding.
   */
  attention?: { fusedBackward?: number; fusedForward?: number };
}

const TILE: readonly (keyof MatmulTiling)[] = ['wgX', 'wgY', 'tm', 'tn', 'tk'];

/** Every family and its settings; tile sizes must be at least 1, the others at least 0. */
const SETTINGS: { [F in keyof Tuning]-?: { keys: readonly string[]; min: number } } = {
  matmul: { keys: TILE, min: 1 },
  matmulSubgroup: { keys: ['enabled'], min: 0 },
  conv2d: { keys: TILE, min: 1 },
  conv2dWinograd: { keys: ['enabled', 'minChannels'], min: 0 },
  conv2dWeightGrad: { keys: ['splitKWorkgroups'], min: 0 },
  rows: { keys: ['threadPerRowFrom', 'subgroups'], min: 0 },
  reduce: { keys: ['workgroupPerRowBelow'], min: 0 },
  attention: { keys: ['fusedBackward', 'fusedForward'], min: 0 },
};

/** The names of the kernel families a Tuning may hold. */
export const TUNING_FAMILIES: readonly string[] = Object.keys(SETTINGS);

/** Settings that turn a kernel on (1) or off (0). */
const SWITCHES = new Set(['enabled', 'fusedBackward', 'fusedForward', 'subgroups']);

/** A JSON object (not an array, not null), as a tuning and its families are. */
export const isRecord = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object' && !Array.isArray(v);
/** A value as the message shows it: NaN and Infinity as themselves (JSON.stringify says null). */
const shown = (v: unknown) => (typeof v === 'number' ? String(v) : JSON.stringify(v));

/**
 * `value` as a Tuning (a copy, its empty families left out), or an Error naming where it came from (`where`), the family or setting at
 * fault and what is accepted; `fix` ends the message.
 */
export function checkTuning(value: unknown, where: string, fix: string): Tuning {
  if (!isRecord(value)) throw new Error(`${where} is not an object of kernel families: ${fix}`);
  for (const [family, settings] of Object.entries(value)) {
    const spec = SETTINGS[family as keyof Tuning];
    if (!spec) throw new Error(`${where} → ${family}: unknown kernel family (known: ${Object.keys(SETTINGS).join(', ')}): ${fix}`);
    if (!isRecord(settings)) throw new Error(`${where} → ${family} is ${JSON.stringify(settings)}, not an object of settings: ${fix}`);
    for (const [key, v] of Object.entries(settings)) {
      if (!spec.keys.includes(key)) throw new Error(`${where} → ${family} → ${key}: unknown setting (known: ${spec.keys.join(', ')}): ${fix}`);
      if (SWITCHES.has(key) ? v !== 0 && v !== 1 : !(typeof v === 'number' && Number.isInteger(v) && v >= spec.min)) {
        throw new Error(`${where} → ${family} → ${key} is ${shown(v)}, not ${SWITCHES.has(key) ? '0 (off) or 1 (on)' : `a whole number ≥ ${spec.min}`}: ${fix}`);
      }
    }
  }
  // A family with no settings leaves every built-in choice, as an absent one: `matmul: {}` selected
  // the register-tiled kernels (a family given turns the subgroup GEMM off) at a generic tile.
  return Object.fromEntries(Object.entries(value).filter(([, settings]) => Object.keys(settings as object).length)) as Tuning;
}
