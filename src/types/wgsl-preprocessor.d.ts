declare module 'wgsl-preprocessor/wgsl-preprocessor.js' {
  /** Template tag: `#if ${cond}` / `#elif ${cond}` / `#else` / `#endif` around WGSL text. */
  export function wgsl(strings: TemplateStringsArray, ...values: unknown[]): string;
}
