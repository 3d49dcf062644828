// The usage chart: cost per day, stacked by model, as an SVG drawn through the DOM (no inline
// styles: colours are the stylesheet's `.s0`..`.s5` classes). The table beside it carries the
// exact numbers; the chart is their picture.

import { el, usd } from './format.js';

const WIDTH = 720;
const HEIGHT = 240;
const PAD = { left: 56, right: 8, top: 8, bottom: 28 };

/// The models of `days` in a stable order, each with its colour class.
export function modelClasses(days) {
  const names = [...new Set(days.flatMap((d) => d.line_items.map((i) => i.name)))].sort();
  return new Map(names.map((name, i) => [name, `s${i % 6}`]));
}

/// A figure with the stacked-bar SVG and its legend for `days` (`daily_costs` of a usage report).
export function costChart(days, label) {
  const classes = modelClasses(days);
  const totals = days.map((d) => d.line_items.reduce((sum, i) => sum + Number(i.cost_usd), 0));
  const max = Math.max(...totals, 0);
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const slot = plotW / Math.max(days.length, 1);
  const bar = Math.max(Math.min(slot * 0.7, 40), 1);
  const y = (v) => (max > 0 ? (v / max) * plotH : 0);
  const svg = el('svg:svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    role: 'img',
    'aria-label': label,
  });
  svg.append(el('svg:line', {
    class: 'axis', x1: PAD.left, x2: WIDTH - PAD.right, y1: PAD.top + plotH, y2: PAD.top + plotH,
  }));
  svg.append(el('svg:text', { x: PAD.left - 4, y: PAD.top + 10, 'text-anchor': 'end' }, usd(trim(max))));
  svg.append(el('svg:text', { x: PAD.left - 4, y: PAD.top + plotH, 'text-anchor': 'end' }, '$0'));
  const labelEvery = Math.ceil(days.length / 8);
  days.forEach((d, i) => {
    const x = PAD.left + i * slot + (slot - bar) / 2;
    let top = PAD.top + plotH;
    for (const item of d.line_items) {
      const h = y(Number(item.cost_usd));
      if (h <= 0) continue;
      top -= h;
      const rect = el('svg:rect', {
        x: x.toFixed(1), y: top.toFixed(2), width: bar.toFixed(1), height: h.toFixed(2),
        class: classes.get(item.name), 'data-model': item.name, 'data-date': d.date,
      });
      rect.append(el('svg:title', {}, `${d.date} ${item.name}: ${usd(item.cost_usd)}`));
      svg.append(rect);
    }
    if (i % labelEvery === 0) {
      svg.append(el('svg:text', {
        x: (x + bar / 2).toFixed(1), y: HEIGHT - 8, 'text-anchor': 'middle',
      }, d.date.slice(5)));
    }
  });
  const legend = el('ul', { class: 'legend' },
    [...classes].map(([name, cls]) => el('li', {}, el('span', { class: `swatch ${cls}`, 'aria-hidden': 'true' }), name)));
  return el('figure', { class: 'chart' }, svg, legend);
}

/// A float for the axis label only (the exact amounts are in the table).
function trim(v) {
  return v >= 1 ? v.toFixed(2) : v.toPrecision(3);
}
