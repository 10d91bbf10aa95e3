// A 3×5 pixel font for labels in the PNG charts (heatmaps, bar charts): digits, capitals, a few
// signs; lower-case letters are drawn as capitals except 't' and 'b' (block/timestep labels).

const GLYPHS: Record<string, string> = {
  '0': '111101101101111', '1': '010110010010111', '2': '111001111100111', '3': '111001111001111', '4': '101101111001001',
  '5': '111100111001111', '6': '111100111101111', '7': '111001010010010', '8': '111101111101111', '9': '111101111001111',
  'A': '010101111101101', 'B': '110101110101110', 'C': '011100100100011', 'D': '110101101101110', 'E': '111100110100111',
  'F': '111100110100100', 'G': '011100101101011', 'H': '101101111101101', 'I': '111010010010111', 'J': '001001001101010',
  'K': '101101110101101', 'L': '100100100100111', 'M': '101111111101101', 'N': '110101101101101', 'O': '010101101101010',
  'P': '110101110100100', 'Q': '010101101110011', 'R': '110101110101101', 'S': '011100010001110', 'T': '111010010010010',
  'U': '101101101101111', 'V': '101101101101010', 'W': '101101111111101', 'X': '101101010101101', 'Y': '101101010010010',
  'Z': '111001010100111', 't': '010111010010011', 'b': '100100111101111', '.': '000000000000010', ',': '000000000010100',
  '%': '101001010100101', '-': '000000111000000', '(': '010100100100010', ')': '010001001001010', '=': '000111000111000',
  '/': '001001010100100', ':': '000010000010000', '+': '000010111010000', '×': '000101010101000', ' ': '000000000000000',
};

/** Draws `text` with its top-left at (x0, y0), each font pixel `scale`×`scale`, through `put`. */
export function drawText(text: string, x0: number, y0: number, scale: number, put: (x: number, y: number) => void): void {
  [...text].forEach((ch, k) => {
    const glyph = GLYPHS[ch] ?? GLYPHS[ch.toUpperCase()];
    if (!glyph) return;
    for (let i = 0; i < 15; i++) {
      if (glyph[i] !== '1') continue;
      const gx = i % 3;
      const gy = Math.floor(i / 3);
      for (let dy = 0; dy < scale; dy++) for (let dx = 0; dx < scale; dx++) put(x0 + (k * 4 + gx) * scale + dx, y0 + gy * scale + dy);
    }
  });
}

/** Width in pixels of `text` drawn at `scale`. */
export const textWidth = (text: string, scale: number) => text.length * 4 * scale;
