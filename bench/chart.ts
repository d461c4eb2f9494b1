// Charts for benchmark results: a Vega-Lite spec rendered to a standalone SVG string in Node, with
// no browser and no native module (vega's headless renderer, `view.toSVG()`).
//
// vega and vega-lite (devDependencies) are ESM-only, and vega's module graph has a top-level await,
// which Node cannot require() from CommonJS. TypeScript compiles `import()` to `require()` under
// "module": "commonjs", so the import goes through a Function, which keeps a real dynamic import.
const importEsm = new Function('specifier', 'return import(specifier)') as (specifier: string) => Promise<unknown>;

/** The parts of vega's API used here (its own typings are not reachable with moduleResolution "node"). */
interface VegaModule {
  parse(spec: object): object;
  View: new (runtime: object, options: { renderer: 'none'; logLevel?: number }) => VegaView;
  Warn: number;
}

interface VegaView {
  toSVG(scaleFactor?: number): Promise<string>;
  finalize(): void;
}

interface VegaLiteModule {
  compile(spec: object): { spec: object };
}

/** A Vega-Lite spec (https://vega.github.io/vega-lite/docs/), kept loose: it is checked by compile(). */
export type VegaLiteSpec = Record<string, unknown>;

/** Compiles a Vega-Lite spec and renders it to an SVG document. */
export async function renderSvg(spec: VegaLiteSpec): Promise<string> {
  const [vega, vegaLite] = (await Promise.all([importEsm('vega'), importEsm('vega-lite')])) as [VegaModule, VegaLiteModule];
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none', logLevel: vega.Warn });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
