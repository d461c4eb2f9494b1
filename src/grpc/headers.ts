// Header maps from Envoy messages: lower-case names, repeated names joined with ",", and a cap on
// the bytes examined so that an enormous header block costs a refusal, not memory.
import type { HeaderValue } from './envoy-types';

export class HeaderCollector {
  readonly map = new Map<string, string>();
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  /** False once the cap is passed; the caller refuses the request. */
  add(name: string, value: string): boolean {
    this.bytes += Buffer.byteLength(name) + Buffer.byteLength(value);
    if (this.bytes > this.maxBytes) return false;
    const key = name.toLowerCase();
    const prev = this.map.get(key);
    this.map.set(key, prev === undefined ? value : `${prev},${value}`);
    return true;
  }

  /** config.core.v3.HeaderValue entries; Envoy sends raw_value (bytes) or value. */
  addAll(values: readonly HeaderValue[] | undefined): boolean {
    for (const h of values ?? []) {
      if (!this.add(h.key ?? '', h.value || (h.raw_value ? h.raw_value.toString('utf8') : ''))) return false;
    }
    return true;
  }
}
