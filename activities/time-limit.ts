/** Waiting with a bound, for the few places that must not wait forever on something they do not control. */

/**
 * Waits for `promise` at most `ms`: resolves true when it settled in time (fulfilled or rejected: the caller
 * reads its outcome elsewhere), false when the time ran out. Its timer is cleared either way, so it never
 * keeps the process alive.
 */
export async function settledWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([
      promise.then(
        () => true as const,
        () => true as const,
      ),
      timedOut,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
