// A restricted unpickler for PyTorch state_dicts. It builds plain values and never calls anything:
// the only globals it accepts are the few a state_dict needs, each mapped to a known builder; any
// other global (e.g. builtins.print, os.system) stops the load with an error naming it. Every
// malformed input (truncation, wrong types on the stack, unknown opcodes) is a CheckpointError.
import { CheckpointError } from './checkpoint-error.ts';

export type PickleValue = unknown;

/** A tensor as `torch._utils._rebuild_tensor_v2` describes it. */
export interface TensorRef {
  kind: 'tensor';
  storage: StorageRef;
  offset: number;
  shape: number[];
  stride: number[];
}

/** A storage named by a persistent id: ('storage', <Type>Storage, key, location, numel[, view]). */
export interface StorageRef {
  kind: 'storage';
  storageType: string;
  /** The root storage's key (its zip entry or legacy record) and element count. */
  key: string;
  numel: number;
  /** A legacy storage view: the elements [offset, offset + size) of the root storage, which its tensors index from. */
  view?: { offset: number; size: number };
}

export class UnsafePickleError extends CheckpointError {
  constructor(file: string, global: string) {
    super(
      file,
      `refusing to load: the pickle references ${global}, which a PyTorch state_dict never needs ` +
        '(allowed: collections.OrderedDict, torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, torch.*Storage). ' +
        'Nothing was executed. Re-save the checkpoint as a plain state_dict (torch.save(model.state_dict(), path)) or as safetensors.',
    );
    this.name = 'UnsafePickleError';
  }
}

/**
 * The bytes end inside the pickle: the file is truncated, or (for a caller parsing a prefix of
 * the file) more bytes are needed.
 */
export class PickleEndOfDataError extends CheckpointError {
  constructor(file: string, at: number, detail = '') {
    super(file, `corrupted pickle at byte ${at}: unexpected end of data (truncated checkpoint?)${detail}`);
    this.name = 'PickleEndOfDataError';
  }
}

interface Global {
  global: string;
}

const MARK = Symbol('mark');
/** The longest GLOBAL module or name line read (the globals a state_dict needs are under 40 bytes). */
const MAX_LINE = 1024;

function isStorageType(name: string): boolean {
  return /^torch\.[A-Za-z0-9]+Storage$/.test(name);
}

const ALLOWED = new Set(['collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter']);

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isCounts = (v: unknown): v is number[] => Array.isArray(v) && v.every(isCount);

/** The value a call of an allowed global builds, or why its arguments are not what torch.save writes. */
function reduce(fn: Global, args: PickleValue[]): PickleValue | string {
  switch (fn.global) {
    case 'collections.OrderedDict':
      return new Map();
    case 'torch._utils._rebuild_tensor_v2': {
      const [storage, offset, shape, stride] = args;
      if ((storage as StorageRef | null)?.kind !== 'storage') return '_rebuild_tensor_v2 without a storage';
      if (!isCount(offset) || !isCounts(shape) || !isCounts(stride) || shape.length !== stride.length) {
        return `_rebuild_tensor_v2 with offset ${String(offset)}, size ${JSON.stringify(shape)}, stride ${JSON.stringify(stride)}: not a tensor view`;
      }
      return { kind: 'tensor', storage: storage as StorageRef, offset, shape: [...shape], stride: [...stride] } satisfies TensorRef;
    }
    case 'torch._utils._rebuild_parameter':
      return args[0];
  }
  return `cannot call ${fn.global}`;
}

/**
 * Unpickles one pickle starting at `start`; returns the value and the offset after STOP.
 * `persistentLoad` turns persistent ids (BINPERSID) into storage references.
 */
export function unpickle(
  bytes: Uint8Array,
  file: string,
  persistentLoad: (pid: PickleValue[]) => PickleValue,
  start = 0,
): { value: PickleValue; end: number } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dec = new TextDecoder();
  const stack: PickleValue[] = [];
  const memo = new Map<number, PickleValue>();
  let p = start;
  const fail = (d: string): never => {
    throw new CheckpointError(file, `corrupted pickle at byte ${p}: ${d}`);
  };
  const pop = (): PickleValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack.pop();
  };
  const top = (): PickleValue => {
    if (stack.length === 0) fail('stack underflow');
    return stack[stack.length - 1];
  };
  const topDict = () => {
    const d = top();
    return d instanceof Map ? d : fail('SETITEM(S) on something that is not a dict');
  };
  const topList = () => {
    const l = top();
    return Array.isArray(l) ? l : fail('APPEND(S) on something that is not a list');
  };
  const memoGet = (key: number) => (memo.has(key) ? memo.get(key) : fail(`memo entry ${key} was never stored`));
  const need = (n: number) => {
    if (p + n > bytes.length) throw new PickleEndOfDataError(file, p);
  };
  const popMark = (): PickleValue[] => {
    const i = stack.lastIndexOf(MARK);
    if (i < 0) fail('no MARK on the stack');
    const items = stack.splice(i);
    items.shift();
    return items;
  };
  // A text line of `opcode`: a GLOBAL's module and name, an INT's or LONG's digits. When no newline
  // comes before the end of the bytes given, the line may continue past them (a legacy checkpoint is parsed from a growing prefix of the file),
  // so that is the same end-of-data error as any other cut, which asks the caller for more bytes; a
  // line that runs past MAX_LINE bytes without one is corrupted whatever follows.
  const readLine = (opcode: 'GLOBAL' | 'INT' | 'LONG') => {
    const nl = bytes.subarray(p, p + MAX_LINE + 1).indexOf(10);
    if (nl < 0) {
      if (p + MAX_LINE + 1 <= bytes.length) fail(`a${opcode === 'INT' ? 'n' : ''} ${opcode} line runs over ${MAX_LINE} bytes without a newline${opcode === 'GLOBAL' ? ': not a module or name' : ''}`);
      throw new PickleEndOfDataError(file, p, ` inside a${opcode === 'INT' ? 'n' : ''} ${opcode} line`);
    }
    const s = dec.decode(bytes.subarray(p, p + nl));
    p += nl + 1;
    return s;
  };
  // A whole number as a JS number where it is safe, else a BigInt (as LONG1 gives it).
  const integer = (v: bigint) => (v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v);
  // INT's and LONG's decimal text (protocols 0 and 1); INT writes True and False as 01 and 00.
  const decimal = (line: string, what: string) => (/^[+-]?\d+$/.test(line) ? BigInt(line) : fail(`${what} ${JSON.stringify(line.slice(0, 40))} is not a whole number`));
  const str = (n: number) => {
    need(n);
    const s = dec.decode(bytes.subarray(p, p + n));
    p += n;
    return s;
  };
  const pushGlobal = (module: string, name: string) => {
    // Protocol-2 pickles name Python 3's builtins module by its Python 2 name (fix_imports).
    const g = `${module === '__builtin__' ? 'builtins' : module}.${name}`;
    if (!/^[A-Za-z_][\w.]*$/.test(g)) fail(`GLOBAL ${JSON.stringify(g.slice(0, 60))}${g.length > 60 ? '…' : ''} is not a Python name`);
    if (!ALLOWED.has(g) && !isStorageType(g)) throw new UnsafePickleError(file, g);
    stack.push({ global: g } satisfies Global);
  };
  for (;;) {
    need(1);
    const op = bytes[p++];
    switch (op) {
      case 0x80: need(1); p += 1; break; // PROTO
      case 0x95: need(8); p += 8; break; // FRAME
      case 0x2e: return { value: pop(), end: p }; // STOP
      case 0x28: stack.push(MARK); break; // MARK
      case 0x7d: stack.push(new Map()); break; // EMPTY_DICT
      case 0x5d: stack.push([]); break; // EMPTY_LIST
      case 0x29: stack.push([]); break; // EMPTY_TUPLE
      case 0x4e: stack.push(null); break; // NONE
      case 0x88: stack.push(true); break; // NEWTRUE
      case 0x89: stack.push(false); break; // NEWFALSE
      case 0x4b: need(1); stack.push(bytes[p]); p += 1; break; // BININT1
      case 0x4d: need(2); stack.push(view.getUint16(p, true)); p += 2; break; // BININT2
      case 0x4a: need(4); stack.push(view.getInt32(p, true)); p += 4; break; // BININT
      case 0x8a: { // LONG1
        need(1);
        const n = bytes[p++];
        need(n);
        let v = 0n;
        for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(bytes[p + i]);
        if (n && bytes[p + n - 1] & 0x80) v -= 1n << BigInt(8 * n);
        p += n;
        stack.push(integer(v));
        break;
      }
      case 0x49: { // INT (protocols 0 and 1; bools as 01 and 00)
        const line = readLine('INT');
        stack.push(line === '01' ? true : line === '00' ? false : integer(decimal(line, 'INT')));
        break;
      }
      case 0x4c: { // LONG (protocols 0 and 1): digits, then L
        const line = readLine('LONG');
        stack.push(integer(decimal(line.endsWith('L') ? line.slice(0, -1) : line, 'LONG')));
        break;
      }
      case 0x47: need(8); stack.push(view.getFloat64(p, false)); p += 8; break; // BINFLOAT
      case 0x58: need(4); { const n = view.getUint32(p, true); p += 4; stack.push(str(n)); } break; // BINUNICODE
      case 0x8c: need(1); { const n = bytes[p++]; stack.push(str(n)); } break; // SHORT_BINUNICODE
      case 0x55: need(1); { const n = bytes[p++]; stack.push(str(n)); } break; // SHORT_BINSTRING
      case 0x43: need(1); { const n = bytes[p++]; need(n); stack.push(bytes.slice(p, p + n)); p += n; } break; // SHORT_BINBYTES
      case 0x42: need(4); { const n = view.getUint32(p, true); p += 4; need(n); stack.push(bytes.slice(p, p + n)); p += n; } break; // BINBYTES
      case 0x63: { const module = readLine('GLOBAL'); const name = readLine('GLOBAL'); pushGlobal(module, name); break; } // GLOBAL
      case 0x93: { // STACK_GLOBAL
        const name = pop();
        const module = pop();
        if (typeof module !== 'string' || typeof name !== 'string') fail('STACK_GLOBAL without a module and a name');
        pushGlobal(module as string, name as string);
        break;
      }
      case 0x51: { // BINPERSID
        const pid = pop();
        if (!Array.isArray(pid)) fail('a persistent id that is not a tuple');
        stack.push(persistentLoad(pid as PickleValue[]));
        break;
      }
      case 0x74: stack.push(popMark()); break; // TUPLE
      case 0x85: stack.push([pop()]); break; // TUPLE1
      case 0x86: { const b = pop(); const a = pop(); stack.push([a, b]); break; } // TUPLE2
      case 0x87: { const c = pop(); const b = pop(); const a = pop(); stack.push([a, b, c]); break; } // TUPLE3
      case 0x52: { // REDUCE
        const args = pop();
        const fn = pop() as Global;
        if (!fn || typeof fn !== 'object' || !('global' in fn)) fail('REDUCE on a non-callable');
        if (!Array.isArray(args)) fail(`REDUCE of ${fn.global} without an argument tuple`);
        const value = isStorageType(fn.global) ? `cannot call ${fn.global}` : reduce(fn, args as PickleValue[]);
        if (typeof value === 'string') fail(value);
        stack.push(value);
        break;
      }
      case 0x62: pop(); break; // BUILD: OrderedDict's _metadata state is not needed
      case 0x73: { const v = pop(); const k = pop(); topDict().set(k, v); break; } // SETITEM
      case 0x75: { // SETITEMS
        const items = popMark();
        if (items.length % 2) fail('SETITEMS with a key but no value');
        const d = topDict();
        for (let i = 0; i < items.length; i += 2) d.set(items[i], items[i + 1]);
        break;
      }
      case 0x61: { const v = pop(); topList().push(v); break; } // APPEND
      case 0x65: { const items = popMark(); const l = topList(); for (const v of items) l.push(v); break; } // APPENDS
      case 0x71: need(1); memo.set(bytes[p++], top()); break; // BINPUT
      case 0x72: need(4); memo.set(view.getUint32(p, true), top()); p += 4; break; // LONG_BINPUT
      case 0x94: memo.set(memo.size, top()); break; // MEMOIZE
      case 0x68: need(1); stack.push(memoGet(bytes[p++])); break; // BINGET
      case 0x6a: need(4); stack.push(memoGet(view.getUint32(p, true))); p += 4; break; // LONG_BINGET
      case 0x30: pop(); break; // POP
      case 0x31: popMark(); break; // POP_MARK
      case 0x32: stack.push(top()); break; // DUP
      default:
        p--;
        fail(`unsupported pickle opcode 0x${op.toString(16)} (not one torch.save writes for a state_dict)`);
    }
  }
}
