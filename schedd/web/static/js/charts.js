// Line charts with uPlot (vendored, a global): one per metric, several series
// overlaid where they share a unit. Drag across a chart to zoom; double-click
// to zoom out. Every chart is also in window.schedd.charts by name, so a test
// (or a console) can read exactly what is drawn: chart.data = [xs, ys...].

const COLORS = ["#2f5bd3", "#d1495b", "#1a7f37", "#edae49", "#8250df", "#00798c", "#e07a1f", "#5f6b7a"];
export const color = (i) => COLORS[i % COLORS.length];

// Several [xs, ys] series on one x axis (xs sorted, nulls where one has no point).
export function align(pairs) {
  if (pairs.length === 1) return [pairs[0][0], pairs[0][1]];
  return uPlot.join(pairs.map(([xs, ys]) => [xs, ys]));
}

// The [x, y] arrays of a metric series from the API's [[time, step, value], ...]:
// x is the step when every point has one, else the time.
export function columns(points) {
  const bySteps = points.length > 0 && points.every((p) => p[1] !== null && p[1] !== undefined);
  return { bySteps, xs: points.map((p) => (bySteps ? p[1] : p[0])), ys: points.map((p) => p[2]) };
}

export function chart(box, name, { labels, data, time, yLabel }) {
  const width = Math.max(300, box.clientWidth - 10);
  const opts = {
    title: name, width, height: 220,
    scales: { x: { time } },
    series: [{ label: time ? "time" : "step" },
      ...labels.map((label, i) => ({ label, stroke: color(i), width: 1.5, spanGaps: true, points: { show: false } }))],
    axes: [{}, { label: yLabel || "", size: 60 }],
    cursor: { drag: { x: true, y: false } },
  };
  const u = new uPlot(opts, data, box);
  window.schedd.charts[name] = u;
  return u;
}

// Keep charts as wide as their box when the window is resized.
export function fit(charts) {
  for (const u of charts) {
    const box = u.root.parentElement;
    if (box) u.setSize({ width: Math.max(300, box.clientWidth - 10), height: 220 });
  }
}
