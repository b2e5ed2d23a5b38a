import type { IncomingMessage } from 'node:http';

/**
 * How a connection is closed after an answer given before its request body was read to
 * the end (an early 401, 408, 413, 429, 503). Closing at once makes the kernel answer the
 * client's unread bytes with a reset, which throws away the answer before most clients
 * have read it: they see "connection reset" instead of the status. So, like nginx's
 * lingering close, the answer is sent, the sending side shut (FIN), and the connection
 * closed only `ms` later. Unlike nginx nothing more is read meanwhile: the client's
 * remaining bytes wait in the kernel's buffers (or in the client), costing this process
 * neither memory nor CPU while the client reads its answer.
 */
export const LINGER = { ms: 2000, maxBytes: 1024 * 1024 };

export function lingerBeforeClose(request: IncomingMessage, limits: { ms: number; maxBytes: number } = LINGER): void {
  const socket = request.socket as (IncomingMessage['socket'] & { destroySoon?: () => void }) | null;
  if (!socket || typeof socket.destroySoon !== 'function' || socket.destroyed) return;
  const close = () => socket.destroy();
  // Until the answer is out, what arrives is dropped (at most maxBytes); taking the body
  // over also keeps Node from draining it after the answer, which it does without bound.
  let dropped = 0;
  request.on('data', (chunk: Buffer) => {
    dropped += chunk.length;
    if (dropped > limits.maxBytes) close();
  });
  // Node's server closes a `connection: close` response with destroySoon(): replace it for this socket only.
  const destroySoon = socket.destroySoon;
  socket.destroySoon = () => {
    socket.destroySoon = destroySoon;
    // Stop reading: a paused request stops the socket once its small buffer is full.
    request.pause();
    socket.end();
    const timer = setTimeout(close, limits.ms);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
  };
}
