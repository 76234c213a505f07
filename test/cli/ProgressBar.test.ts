import { EventEmitter } from 'node:events';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { mirrorBarFields } from '../../src/cli/mirrorProgress.js';
import {
  BAR_GRAPHIC_PRIORITY,
  barFields,
  FieldPriority,
  layoutBarLine,
  ProgressBar,
  type BarField,
  type BarStream,
  type BarValues,
} from '../../src/cli/ProgressBar.js';
import { fuzzParams } from '../helpers/fuzz.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const GRAPHIC = /^[\u2588\u2591]+/;

/** A mirror a third of the way through, being written to: what the bar shows most of the time. */
const mirrorValues: BarValues = {
  done: 1.5 * GiB,
  total: 4 * GiB,
  rate: 120.5 * MiB,
  etaSeconds: 245,
  fields: mirrorBarFields('running', { dirtyBytes: 12.3 * MiB, dirtyRate: 5.2 * MiB }),
};
const copyValues: BarValues = { done: 1.5 * GiB, total: 4 * GiB, rate: 120.5 * MiB, etaSeconds: 245 };

function columns(line: string): number {
  return [...line].length;
}

/** The line's fields, without the graphic. */
function textOf(line: string): string[] {
  const text = line.replace(GRAPHIC, '').trimStart();
  return text === '' ? [] : text.split(' | ');
}

function graphicColumns(line: string): number {
  return columns(GRAPHIC.exec(line)?.[0] ?? '');
}

function mirrorLine(width: number, values = mirrorValues): string {
  const fraction = values.done / values.total;
  return layoutBarLine(width, fraction, barFields(values, fraction));
}

describe('layoutBarLine', () => {
  it.each([40, 80, 120, 200])('fits a mirror line in %i columns, keeping the percentage and the phase', (width) => {
    const line = mirrorLine(width);
    expect(columns(line), line).toBeLessThanOrEqual(width);
    expect(textOf(line)).toEqual(expect.arrayContaining(['37%', 'running']));
  });

  it('keeps every field at 120 columns, the dirty rate included, with a shorter graphic (the line used to be 131 wide)', () => {
    const line = mirrorLine(120);
    expect(textOf(line)).toEqual(['37%', '1.50 GiB of 4.00 GiB', '120.5 MiB/s', 'ETA 4m05s', 'running', 'dirty 12.3 MiB', 'dirtied 5.20 MiB/s']);
    expect(graphicColumns(line)).toBeGreaterThanOrEqual(10);
    expect(graphicColumns(line)).toBeLessThan(30);
    expect(columns(line)).toBe(120);
  });

  it('draws the full graphic and every field at 200 columns', () => {
    const line = mirrorLine(200);
    expect(graphicColumns(line)).toBe(30);
    expect(textOf(line)).toHaveLength(7);
  });

  it('drops the least important fields first at 80 columns, and keeps the graphic', () => {
    const line = mirrorLine(80);
    expect(textOf(line)).toEqual(['37%', '1.50 GiB of 4.00 GiB', 'ETA 4m05s', 'running', 'dirty 12.3 MiB']);
    expect(graphicColumns(line)).toBeGreaterThanOrEqual(10);
  });

  it('keeps the percentage and the phase at 40 columns, with the graphic', () => {
    const line = mirrorLine(40);
    expect(textOf(line)).toEqual(['37%', 'running']);
    expect(graphicColumns(line)).toBeGreaterThanOrEqual(10);
  });

  it('drops the graphic before the percentage and the phase on a very narrow terminal, and writes nothing in 2 columns', () => {
    expect(mirrorLine(20)).toBe('37% | running');
    expect(mirrorLine(12)).toBe('37%');
    expect(mirrorLine(2)).toBe('');
    expect(mirrorLine(0)).toBe('');
  });

  it('fits the copy bar (no mirror fields) at 80 columns', () => {
    const fraction = copyValues.done / copyValues.total;
    const line = layoutBarLine(80, fraction, barFields(copyValues, fraction));
    expect(columns(line)).toBeLessThanOrEqual(80);
    expect(textOf(line)).toEqual(['37%', '1.50 GiB of 4.00 GiB', '120.5 MiB/s', 'ETA 4m05s']);
  });

  it('fills the graphic in proportion, and lays the same values out the same way', () => {
    expect(layoutBarLine(200, 0.5, [{ text: '50%', priority: 0 }])).toBe(`${'\u2588'.repeat(15)}${'\u2591'.repeat(15)} 50%`);
    expect(layoutBarLine(200, 1, [])).toBe('\u2588'.repeat(30));
    expect(layoutBarLine(200, Number.NaN, [{ text: 'x', priority: 0 }])).toBe(`${'\u2591'.repeat(30)} x`);
    expect(mirrorLine(97)).toBe(mirrorLine(97));
  });

  it('for any fields and width: never wider than the width, and never a field without every more important one', () => {
    const field = fc.record({
      text: fc.string({ unit: fc.constantFrom(...'abc 0123456789%/.'), minLength: 1, maxLength: 30 }),
      priority: fc.integer({ min: 0, max: 9 }),
    });
    fc.assert(
      fc.property(fc.array(field, { maxLength: 10 }), fc.integer({ min: -5, max: 250 }), fc.double({ min: 0, max: 1, noNaN: true }), (fields, width, fraction) => {
        const line = layoutBarLine(width, fraction, fields);
        expect(columns(line)).toBeLessThanOrEqual(Math.max(0, width));
        // Which fields made it: the line's text is the kept ones, in display order.
        const keptCount = keptPrefixLength(fields, line);
        expect(keptCount, line).toBeGreaterThanOrEqual(0);
        const graphic = graphicColumns(line);
        if (graphic > 0) {
          expect(graphic).toBeGreaterThanOrEqual(Math.min(10, width));
          expect(graphic).toBeLessThanOrEqual(30);
        }
        // The graphic is only ever dropped for fields that rank above it.
        const ranked = rankedFields(fields);
        const keptRanks = ranked.slice(0, keptCount);
        if (graphic === 0 && keptCount < fields.length) expect(keptRanks.every((f) => f.priority <= BAR_GRAPHIC_PRIORITY)).toBe(true);
        // A line with room for the next field (and the graphic at its narrowest) would have kept it.
        if (keptCount < fields.length && (graphic > 0 || ranked[keptCount]!.priority <= BAR_GRAPHIC_PRIORITY)) {
          const next = ranked[keptCount]!;
          expect(columns(textWith([...keptRanks, next], fields)) + (graphic > 0 ? 11 : 0)).toBeGreaterThan(width);
        }
      }),
      fuzzParams(10),
    );
  });
});

/** Fields in importance order (ties in display order). */
function rankedFields(fields: readonly BarField[]): BarField[] {
  return fields
    .map((f, i) => ({ f, i }))
    .sort((a, b) => a.f.priority - b.f.priority || a.i - b.i)
    .map(({ f }) => f);
}

/** The text of `kept`, shown in display order. */
function textWith(kept: readonly BarField[], fields: readonly BarField[]): string {
  return fields.filter((f) => kept.includes(f)).map((f) => f.text).join(' | ');
}

/** How many of the most important fields the line holds; -1 if it holds anything else. */
function keptPrefixLength(fields: readonly BarField[], line: string): number {
  const graphic = GRAPHIC.exec(line)?.[0] ?? '';
  // After a graphic comes one space, then the text (whose own first character may be a space).
  const text = graphic === '' ? line : line.slice(graphic.length + 1);
  const ranked = rankedFields(fields);
  for (let n = ranked.length; n >= 0; n--) if (textWith(ranked.slice(0, n), fields) === text) return n;
  return -1;
}

/** A terminal to draw on: records what is written, and can be resized. */
class FakeTerminal extends EventEmitter {
  isTTY = true;
  columns: number | undefined = 120;
  readonly writes: string[] = [];
  write(chunk: string): boolean {
    this.writes.push(chunk);
    return true;
  }
  /** The lines the bar drew (the writes that are not escape sequences or newlines). */
  lines(): string[] {
    return this.writes.filter((w) => !w.includes('\x1b') && w !== '\n' && w !== '');
  }
  resize(columns: number | undefined): void {
    this.columns = columns;
    this.emit('resize');
  }
}

describe('ProgressBar', () => {
  const bars: ProgressBar[] = [];
  afterEach(() => {
    for (const bar of bars.splice(0)) bar.stop();
  });
  function barOn(terminal: FakeTerminal): ProgressBar {
    const bar = new ProgressBar({ stream: terminal as unknown as BarStream });
    bars.push(bar);
    return bar;
  }

  it("draws a mirror's line within a 120-column terminal, dirty rate included", () => {
    const terminal = new FakeTerminal();
    barOn(terminal).update(mirrorValues);
    const line = terminal.lines().at(-1)!;
    expect(columns(line), line).toBeLessThanOrEqual(120);
    expect(line).toContain('dirtied 5.20 MiB/s');
    expect(line).toContain('37% | ');
  });

  it('redraws for the new width when the terminal is resized', () => {
    const terminal = new FakeTerminal();
    const bar = barOn(terminal);
    bar.update(mirrorValues);
    terminal.resize(40);
    const narrow = terminal.lines().at(-1)!;
    expect(columns(narrow), narrow).toBeLessThanOrEqual(40);
    expect(textOf(narrow)).toEqual(['37%', 'running']);
    terminal.resize(200);
    expect(graphicColumns(terminal.lines().at(-1)!)).toBe(30);
  });

  it('lays out for 80 columns when the terminal does not report its width', () => {
    const terminal = new FakeTerminal();
    terminal.columns = undefined;
    const bar = barOn(terminal);
    expect(bar.width()).toBe(80);
    bar.update(copyValues);
    expect(terminal.lines().at(-1)).toBe(layoutBarLine(80, copyValues.done / copyValues.total, barFields(copyValues, 0.375)));
  });

  it("keeps the copy command's bar: percentage, amount, rate and ETA", () => {
    const terminal = new FakeTerminal();
    terminal.columns = 100;
    barOn(terminal).update(copyValues);
    const line = terminal.lines().at(-1)!;
    expect(textOf(line)).toEqual(['37%', '1.50 GiB of 4.00 GiB', '120.5 MiB/s', 'ETA 4m05s']);
    expect(graphicColumns(line)).toBe(30);
  });

  it('stops listening for resizes once stopped', () => {
    const terminal = new FakeTerminal();
    const bar = barOn(terminal);
    bar.update(copyValues);
    bar.stop();
    expect(terminal.listenerCount('resize')).toBe(0);
    const drawn = terminal.lines().length;
    terminal.resize(50);
    expect(terminal.lines().length).toBe(drawn);
  });

  it('shows a free-text note last, and drops it first', () => {
    const values: BarValues = { ...copyValues, note: 'verifying' };
    const fraction = values.done / values.total;
    expect(textOf(layoutBarLine(200, fraction, barFields(values, fraction))).at(-1)).toBe('verifying');
    expect(textOf(layoutBarLine(70, fraction, barFields(values, fraction)))).not.toContain('verifying');
    expect(FieldPriority.NOTE).toBeGreaterThan(FieldPriority.DIRTY_RATE);
  });
});

describe('ProgressBar on stderr, through the API the mirror used before fields', () => {
  const restores: Array<() => void> = [];
  afterEach(() => {
    vi.restoreAllMocks();
    for (const restore of restores.splice(0).reverse()) restore();
  });

  /** Makes stderr look like a terminal `columns` wide, recording what is written to it. */
  function stderrAsTerminal(columns: number): string[] {
    const writes: string[] = [];
    const define = (key: 'isTTY' | 'columns', value: unknown): void => {
      const had = Object.getOwnPropertyDescriptor(process.stderr, key);
      Object.defineProperty(process.stderr, key, { value, configurable: true, writable: true });
      restores.push(() => (had ? Object.defineProperty(process.stderr, key, had) : delete (process.stderr as unknown as Record<string, unknown>)[key]));
    };
    define('isTTY', true);
    define('columns', columns);
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
      writes.push(String(chunk));
      return true;
    });
    return writes;
  }
  it('keeps the line of a mirror with a note within 120 columns (it was 131: the end was cut off)', () => {
    const writes = stderrAsTerminal(120);
    const bar = new ProgressBar();
    try {
      bar.update({ ...copyValues, note: 'running | dirty 12.3 MiB | dirtied 5.20 MiB/s' });
    } finally {
      bar.stop();
    }
    const lines = writes.filter((w) => !w.includes('\x1b') && w !== '\n' && w !== '');
    expect(lines.length).toBeGreaterThan(0);
    for (const line of lines) {
      expect(columns(line), line).toBeLessThanOrEqual(120);
      expect(line).toContain('dirtied 5.20 MiB/s');
    }
  });
});
