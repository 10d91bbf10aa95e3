// A small, strict option parser: every option is declared with its default and help text, so
// `--help` lists them all and a misspelt option is an error instead of being ignored.

export interface OptionSpec {
  help: string;
  default?: string;
  /** A flag takes no value. */
  flag?: boolean;
}

export type Parsed = Record<string, string | boolean | undefined>;

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export function parseArgs(command: string, argv: string[], spec: Record<string, OptionSpec>): Parsed | null {
  const out: Parsed = {};
  for (const [k, s] of Object.entries(spec)) out[k] = s.flag ? false : s.default;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--help' || a === '-h') {
      console.log(usage(command, spec));
      return null;
    }
    if (!a.startsWith('--')) throw new UsageError(`difrep ${command}: unexpected argument "${a}" (see --help)`);
    const [name, inline] = a.slice(2).split(/=(.*)/s, 2);
    const s = spec[name];
    if (!s) throw new UsageError(`difrep ${command}: unknown option --${name} (see --help)`);
    if (s.flag) out[name] = true;
    else {
      const v = inline ?? argv[++i];
      if (v === undefined) throw new UsageError(`difrep ${command}: --${name} needs a value`);
      out[name] = v;
    }
  }
  return out;
}

export function usage(command: string, spec: Record<string, OptionSpec>): string {
  const lines = Object.entries(spec).map(([k, s]) => `  --${(k + (s.flag ? '' : ' VALUE')).padEnd(22)} ${s.help}${s.default !== undefined ? ` (default ${s.default})` : ''}`);
  return `usage: difrep ${command} [options]\n\n${lines.join('\n')}`;
}

export function numberList(v: string | boolean | undefined, name: string): number[] {
  if (typeof v !== 'string' || v === '') return [];
  return v.split(',').map((s) => {
    const n = Number(s);
    if (!Number.isFinite(n)) throw new UsageError(`--${name}: "${s}" is not a number`);
    return n;
  });
}

export function int(v: string | boolean | undefined, name: string, min = 0): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer ≥ ${min}, got ${v}`);
  return n;
}
