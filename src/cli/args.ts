// Every command declares its options once — type, range or choices, default, help — and this module
// parses them with node:util's parseArgs in strict mode (Node and Deno), converts and checks every
// value, and prints --help from the same declaration. Nothing runs before the whole command line is
// valid: a bad value is one line naming the option, what it got and what it accepts.
import { parseArgs as parseNodeArgs } from 'node:util';

interface Base {
  help: string;
  /** Placeholder in --help, e.g. DIR or FILE. */
  meta?: string;
}
interface FlagSpec extends Base {
  type: 'flag';
}
interface StringSpec extends Base {
  type: 'string';
  default?: string;
  required?: boolean;
  choices?: readonly string[];
}
interface NumberSpec extends Base {
  type: 'int' | 'number';
  default?: number;
  required?: boolean;
  /** Inclusive bounds. */
  min?: number;
  max?: number;
  /** Exclusive lower bound (a learning rate, a temperature). */
  above?: number;
}
interface ListSpec extends Base {
  type: 'ints' | 'numbers';
  default?: readonly number[];
  required?: boolean;
  min?: number;
  max?: number;
  above?: number;
  /** Each value at most once (a repeated t or b would be extracted or fed twice). */
  unique?: boolean;
}
export type OptionSpec = FlagSpec | StringSpec | NumberSpec | ListSpec;
export type OptionSpecs = Record<string, OptionSpec>;

type ValueOf<S> = S extends FlagSpec ? boolean : S extends NumberSpec ? number : S extends ListSpec ? number[] : string;
type Always<S> = S extends FlagSpec ? true : S extends { required: true } ? true : S extends { default: unknown } ? true : false;
/** The parsed options: an option with a default, a required one or a flag always has a value. */
export type Options<T extends OptionSpecs> = { [K in keyof T]: Always<T[K]> extends true ? ValueOf<T[K]> : ValueOf<T[K]> | undefined };

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** A negative number given as a separate word (`--lr -1`) reaches the range check instead of parseArgs' "ambiguous" error. */
function joinNegativeValues(argv: string[], spec: OptionSpecs): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].startsWith('--') ? argv[i].slice(2) : '';
    const s = spec[name];
    if (s && s.type !== 'flag' && s.type !== 'string' && /^-[\d.]/.test(argv[i + 1] ?? '')) out.push(`${argv[i]}=${argv[++i]}`);
    else out.push(argv[i]);
  }
  return out;
}

function rangeText(s: NumberSpec | ListSpec): string {
  const kind = s.type === 'int' || s.type === 'ints' ? 'an integer' : 'a number';
  const parts = [s.above !== undefined ? `> ${s.above}` : '', s.min !== undefined ? `≥ ${s.min}` : '', s.max !== undefined ? `≤ ${s.max}` : ''].filter(Boolean);
  return `${kind}${parts.length ? ` ${parts.join(' and ')}` : ''}`;
}

function toNumber(command: string, name: string, s: NumberSpec | ListSpec, raw: string, whole: string): number {
  const integer = s.type === 'int' || s.type === 'ints';
  // Decimal numerals only: Number() also reads 0x1c, 0b11 and 0o7 (--epochs 0x1c trained 28 epochs).
  const numeral = integer ? /^\s*[+-]?\d+\s*$/ : /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;
  const n = numeral.test(raw) ? Number(raw) : NaN;
  const ok = Number.isFinite(n) && (!integer || Number.isInteger(n)) && (s.min === undefined || n >= s.min) && (s.max === undefined || n <= s.max) && (s.above === undefined || n > s.above);
  if (!ok) {
    const what = s.type === 'ints' || s.type === 'numbers' ? `each value of --${name} must be ${rangeText(s)}, got "${raw}" in "${whole}"` : `--${name} must be ${rangeText(s)}, got "${raw}"`;
    throw new UsageError(`difrep ${command}: ${what}`);
  }
  return n;
}

function convert(command: string, name: string, s: OptionSpec, raw: string): unknown {
  switch (s.type) {
    case 'flag':
      return true;
    case 'string':
      if (raw === '') throw new UsageError(`difrep ${command}: --${name} needs a value, got an empty string`);
      if (s.choices && !s.choices.includes(raw)) throw new UsageError(`difrep ${command}: --${name} must be one of ${s.choices.join(', ')}, got "${raw}"`);
      return raw;
    case 'int':
    case 'number':
      return toNumber(command, name, s, raw, raw);
    case 'ints':
    case 'numbers': {
      if (raw === '') throw new UsageError(`difrep ${command}: --${name} needs a comma-separated list, got an empty string`);
      const values = raw.split(',').map((v) => toNumber(command, name, s, v, raw));
      const repeated = values.find((v, i) => values.indexOf(v) !== i);
      if (s.unique && repeated !== undefined) throw new UsageError(`difrep ${command}: --${name} lists ${repeated} twice ("${raw}"); give each value once`);
      return values;
    }
  }
}

/** Parses `argv` against `spec`; null when --help was printed. Positionals only where `positionals` names them (e.g. FILE...). */
export function parseArgs<T extends OptionSpecs>(command: string, argv: string[], spec: T, positionals?: string): (Options<T> & { _: string[] }) | null {
  // Every option collected as a list, so one given twice is an error, not its last value silently.
  const config: Record<string, { type: 'boolean' | 'string'; short?: string; multiple?: boolean }> = { help: { type: 'boolean', short: 'h' } };
  for (const [k, s] of Object.entries(spec)) config[k] = { type: s.type === 'flag' ? 'boolean' : 'string', multiple: true };
  let parsed: { values: Record<string, (string | boolean)[] | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseNodeArgs({ args: joinNegativeValues(argv, spec), options: config, strict: true, allowPositionals: !!positionals }) as typeof parsed;
  } catch (e) {
    const err = e as Error & { code?: string };
    const unknown = /Unknown option '([^']+)'/.exec(err.message);
    if (unknown) throw new UsageError(`difrep ${command}: unknown option ${unknown[1]} (see --help)`);
    const positional = /Unexpected argument '([^']+)'/.exec(err.message);
    if (positional) throw new UsageError(`difrep ${command}: unexpected argument "${positional[1]}" (options start with --; see --help)`);
    const ambiguous = /Option '([^']+)' argument is ambiguous/.exec(err.message);
    if (ambiguous) {
      const next = argv[argv.indexOf(ambiguous[1]) + 1];
      throw new UsageError(`difrep ${command}: ${ambiguous[1]} needs a value, but the next argument is ${JSON.stringify(next)}, which starts with a dash (a forgotten value?); give a value that starts with one as ${ambiguous[1]}=${next}`);
    }
    throw new UsageError(`difrep ${command}: ${err.message.split('\n')[0]}`);
  }
  if (parsed.values.help) {
    console.log(usage(command, spec, positionals));
    return null;
  }
  const out: Record<string, unknown> = { _: parsed.positionals };
  for (const [k, s] of Object.entries(spec)) {
    const given = parsed.values[k] as (string | boolean)[] | undefined;
    if (s.type !== 'flag' && given && given.length > 1) {
      const list = s.type === 'ints' || s.type === 'numbers' ? ` (a list takes commas: --${k} ${given.join(',')})` : '';
      throw new UsageError(`difrep ${command}: --${k} is given ${given.length} times (${given.map((v) => `"${v}"`).join(', ')}); give it once${list}`);
    }
    const raw = given?.[0];
    if (s.type === 'flag') out[k] = raw === true;
    else if (raw !== undefined) out[k] = convert(command, k, s, String(raw));
    else if (s.required) throw new UsageError(`difrep ${command}: --${k} ${s.meta ?? 'VALUE'} is required (${s.help})`);
    else out[k] = s.default;
  }
  return out as Options<T> & { _: string[] };
}

export function usage(command: string, spec: OptionSpecs, positionals?: string): string {
  const lines = Object.entries(spec).map(([k, s]) => {
    const arg = s.type === 'flag' ? '' : ` ${s.meta ?? (s.type === 'ints' || s.type === 'numbers' ? 'LIST' : s.type === 'int' || s.type === 'number' ? 'N' : 'VALUE')}`;
    const accepts = s.type === 'string' && s.choices ? ` [${s.choices.join('|')}]` : s.type !== 'flag' && s.type !== 'string' ? ` [${rangeText(s)}]` : '';
    const dflt = s.type !== 'flag' && s.default !== undefined ? ` (default ${Array.isArray(s.default) ? s.default.join(',') : s.default})` : s.type !== 'flag' && s.required ? ' (required)' : '';
    return `  --${(k + arg).padEnd(24)} ${s.help}${accepts}${dflt}`;
  });
  return `usage: difrep ${command} [options]${positionals ? ` ${positionals}` : ''}\n\n${lines.join('\n')}`;
}

/** Whether option --`name` appears in `argv` (given, not defaulted). */
export const given = (argv: readonly string[], name: string): boolean => argv.some((a) => a === `--${name}` || a.startsWith(`--${name}=`));
