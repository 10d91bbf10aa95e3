// A kernel's uniform struct, declared once: the WGSL `struct Params` the kernel reads as `u` and
// the packer that fills it from named values come from the same field list, so an op can no longer
// write its values in an order the kernel's struct does not have.
//
// Layout rule (WGSL §13.4, uniform address space): `dims` fields are `array<vec4<u32>, 2>` (32
// bytes, 16-byte aligned) and come first, in declared order; 4-byte scalars follow in declared
// order. No field then needs padding, and the byte offsets below are the WGSL ones.

/** u32, i32, f32 scalars, or `dims`: up to MAX_RANK u32s (shapes, strides) as `array<vec4<u32>, 2>`. */
export type UniformType = 'u32' | 'i32' | 'f32' | 'dims';
export type UniformFields = Readonly<Record<string, UniformType>>;
/** What an op passes for a layout: a number per scalar field, a list per `dims` field. */
export type UniformValues<F extends UniformFields> = {
  readonly [K in keyof F]: F[K] extends 'dims' ? readonly number[] : number;
};

/** The most dimensions a `dims` field holds. */
export const MAX_RANK = 8;

export interface UniformField {
  name: string;
  type: UniformType;
  /** Byte offset in the packed struct (a multiple of 16 for `dims`). */
  offset: number;
}

export interface UniformLayout<F extends UniformFields = UniformFields> {
  /** Fields in packing order, with their byte offsets. */
  readonly fields: readonly UniformField[];
  /** `struct Params { … }` and `@group(0) @binding(0) var<uniform> u: Params;`. */
  readonly wgsl: string;
  /** Packed size, rounded up to 16 bytes (a uniform struct's alignment). */
  readonly byteLength: number;
  /** Packs `values` (one per field, by name), checking each against its type; `kernel` names the errors. */
  pack(values: UniformValues<F>, kernel: string): ArrayBuffer;
  /** pack() into byteLength bytes of `view` from `offset` (the engine's uniform arena), zeros where no value goes. */
  packInto(view: DataView, offset: number, values: UniformValues<F>, kernel: string): void;
}

const WGSL_TYPE: Record<UniformType, string> = { u32: 'u32', i32: 'i32', f32: 'f32', dims: `array<vec4<u32>, ${MAX_RANK / 4}>` };
const SIZE: Record<UniformType, number> = { u32: 4, i32: 4, f32: 4, dims: 4 * MAX_RANK };

export function uniformLayout<const F extends UniformFields>(declared: F): UniformLayout<F> {
  const names = Object.keys(declared);
  if (names.length === 0) throw new Error('internal: a uniform layout needs at least one field');
  const ordered = [...names.filter((n) => declared[n] === 'dims'), ...names.filter((n) => declared[n] !== 'dims')];
  let offset = 0;
  const fields = ordered.map((name) => {
    const field = { name, type: declared[name], offset };
    offset += SIZE[field.type];
    return field;
  });
  const byteLength = Math.ceil(offset / 16) * 16;
  const wgsl = `struct Params { ${fields.map((f) => `${f.name}: ${WGSL_TYPE[f.type]}`).join(', ')} }
@group(0) @binding(0) var<uniform> u: Params;`;

  function packInto(view: DataView, offset: number, values: UniformValues<F>, kernel: string): void {
    const given = values as Readonly<Record<string, number | readonly number[]>>;
    const unknown = Object.keys(given).filter((n) => !(n in declared));
    if (unknown.length) throw new Error(`${kernel}: unknown uniform ${unknown.join(', ')} (the kernel's are ${names.join(', ')})`);
    new Uint8Array(view.buffer, view.byteOffset + offset, byteLength).fill(0);
    for (const f of fields) {
      const at = offset + f.offset;
      const value = given[f.name];
      if (value === undefined) throw new Error(`${kernel}: uniform ${f.name} is missing`);
      if (f.type === 'dims') {
        if (typeof value === 'number') throw new TypeError(`${kernel}: uniform ${f.name} takes a list of dimensions, not ${value}`);
        if (value.length > MAX_RANK) throw new RangeError(`${kernel}: tensors of rank ${value.length} exceed the engine's maximum rank ${MAX_RANK}`);
        value.forEach((d, k) => view.setUint32(at + 4 * k, checked(kernel, `${f.name}[${k}]`, 'u32', d), true));
      } else {
        if (typeof value !== 'number') throw new TypeError(`${kernel}: uniform ${f.name} is a ${f.type}, not a list`);
        const v = checked(kernel, f.name, f.type, value);
        if (f.type === 'f32') view.setFloat32(at, v, true);
        else if (f.type === 'i32') view.setInt32(at, v, true);
        else view.setUint32(at, v, true);
      }
    }
  }

  function pack(values: UniformValues<F>, kernel: string): ArrayBuffer {
    const buffer = new ArrayBuffer(byteLength);
    packInto(new DataView(buffer), 0, values, kernel);
    return buffer;
  }

  return { fields, wgsl, byteLength, pack, packInto };
}

function checked(kernel: string, name: string, type: Exclude<UniformType, 'dims'>, v: number): number {
  const ok = type === 'f32' ? Number.isFinite(v)
    : type === 'i32' ? Number.isInteger(v) && v >= -0x80000000 && v <= 0x7fffffff
    : Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
  if (!ok) throw new RangeError(`${kernel}: uniform ${name} = ${v} is not a valid ${type}`);
  return v;
}
