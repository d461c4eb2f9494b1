// A Map with a size cap that drops the least recently used entry: the number of rate-limit keys a
// replica tracks stays bounded however many distinct keys arrive.
export class BoundedMap<V> {
  private readonly map = new Map<string, V>();
  evictions = 0;

  /** `onEvict` hears of every entry dropped to make room (not of delete()). */
  constructor(
    readonly capacity: number,
    private readonly onEvict?: (key: string, value: V) => void,
  ) {}

  get size(): number {
    return this.map.size;
  }

  get(key: string): V | undefined {
    return this.map.get(key);
  }

  /** Sets and marks as most recently used (Map keeps insertion order). */
  set(key: string, value: V): void {
    if (this.map.has(key)) this.map.delete(key);
    else if (this.map.size >= this.capacity) {
      const [oldest, value] = this.map.entries().next().value as [string, V];
      this.map.delete(oldest);
      this.evictions += 1;
      this.onEvict?.(oldest, value);
    }
    this.map.set(key, value);
  }

  delete(key: string): void {
    this.map.delete(key);
  }

  values(): IterableIterator<V> {
    return this.map.values();
  }

  keys(): IterableIterator<string> {
    return this.map.keys();
  }
}
