import type { Writable } from 'node:stream';

export type Format = 'json' | 'table';

/** Columns padded to their widest cell, two spaces apart, the last one unpadded (as docker prints). */
export function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const line = (cells: readonly string[]) =>
    cells
      .map((cell, i) => (i === cells.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].map((l) => `${l}\n`).join('');
}

export function json(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** 1536 → "1.5 KiB": binary units, as `du -h` and `docker system df` print. */
export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** What people read in a table: the first 8 characters, which `--no-trunc` and every prefix-taking command accept. */
export function shortId(id: string, full: boolean): string {
  return full ? id : id.slice(0, 8);
}

/**
 * A progress line on a terminal, rewritten in place and cleared when done; nothing at all
 * when the stream is not a terminal, so logs and pipes only ever get whole lines.
 */
export class ProgressLine {
  #shown = false;
  #last = 0;

  constructor(private readonly stream: Writable & { isTTY?: boolean; columns?: number }) {}

  update(text: string): void {
    if (!this.stream.isTTY) return;
    const now = Date.now();
    if (now - this.#last < 100) return;
    this.#last = now;
    const width = (this.stream.columns ?? 80) - 1;
    this.stream.write(`\r\x1b[K${text.slice(0, width)}`);
    this.#shown = true;
  }

  done(): void {
    if (this.#shown) this.stream.write('\r\x1b[K');
    this.#shown = false;
  }
}
