/**
 * The signal of one delivery: aborted on shutdown, or once the delivery has taken
 * `timeouts.deliveryMs`. One controller and timer per delivery, dropped at its end
 * (AbortSignal.any would tie a listener per delivery to the long-lived shutdown signal
 * until the garbage collector runs).
 */
export interface DeliveryBound {
  signal: AbortSignal | undefined;
  /** Whether the bound (not shutdown) ended the delivery. */
  overdue(): boolean;
  end(): void;
}

export function deliveryBound(deliveryMs: number | undefined, shutdown: AbortSignal | undefined): DeliveryBound {
  if (deliveryMs === undefined) return { signal: shutdown, overdue: () => false, end: () => {} };
  const controller = new AbortController();
  let overdue = false;
  const timer = setTimeout(() => {
    overdue = true;
    controller.abort();
  }, deliveryMs);
  timer.unref();
  const onShutdown = () => controller.abort();
  if (shutdown?.aborted) controller.abort();
  else shutdown?.addEventListener('abort', onShutdown, { once: true });
  return {
    signal: controller.signal,
    overdue: () => overdue,
    end: () => {
      clearTimeout(timer);
      shutdown?.removeEventListener('abort', onShutdown);
    },
  };
}
