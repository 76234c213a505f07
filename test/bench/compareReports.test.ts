import { describe, expect, it } from 'vitest';
import { compareReports, parseTolerance } from '../../bench/lib/compareReports.js';

const row = (tool: string, median: number, ratioToNbdcopy?: number) => ({ tool, variant: 'random', cache: 'warm', median, ratioToNbdcopy });

describe('bench:compare', () => {
  it('flags a ratio that grew past the tolerance as a regression', () => {
    const [r] = compareReports([row('blockmirror', 5, 1.0)], [row('blockmirror', 5, 1.2)], { tool: 'blockmirror', metric: 'ratio', tolerance: 0.1 });
    expect(r!.status).toBe('regressed');
  });

  it('accepts a change within the tolerance', () => {
    const [r] = compareReports([row('blockmirror', 5, 1.0)], [row('blockmirror', 9, 1.05)], { tool: 'blockmirror', metric: 'ratio', tolerance: 0.1 });
    expect(r!.status).toBe('ok');
  });

  it('compares seconds when asked, or when a report has no nbdcopy ratio', () => {
    const [r] = compareReports([row('blockmirror', 5)], [row('blockmirror', 6)], { tool: 'blockmirror', metric: 'ratio', tolerance: 0.1 });
    expect(r!.status).toBe('regressed');
  });

  it('reports a row missing from the new report', () => {
    const [r] = compareReports([row('blockmirror', 5, 1)], [], { tool: 'blockmirror', metric: 'ratio', tolerance: 0.1 });
    expect(r!.status).toBe('missing');
  });

  it('reads tolerances as percentages or fractions', () => {
    expect(parseTolerance('10%')).toBeCloseTo(0.1);
    expect(parseTolerance('0.25')).toBeCloseTo(0.25);
    expect(() => parseTolerance('ten')).toThrow();
  });
});
