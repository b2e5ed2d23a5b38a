import { z } from 'zod';

/**
 * Status updates from the workers to the post office, for `GET /v1/messages/:id`.
 *
 * beanstalkd cannot look a job up by message id, and a retried message is a new job with
 * a new id, so the post office cannot find a deferred message by itself. Instead each
 * worker puts a small update into the status tube whenever a message that is, or was,
 * deferred settles an attempt; the post office consumes the tube into a table in its
 * memory. (A tube per message would make the lookup trivial, but beanstalkd finds tubes by
 * a linear scan: with 100,000 tubes every `use` took 5 ms, measured.)
 *
 * The worker sends updates only while someone watches the status tube, so they never pile
 * up when no post office consumes them.
 */
export const STATUS_TUBE = 'hedwig-status';

export const recipientStatusSchema = z.object({
  recipient: z.string(),
  state: z.enum(['delivered', 'deferred', 'bounced', 'expired']),
  responseCode: z.number().int().optional(),
  enhancedCode: z.string().optional(),
  response: z.string(),
  mx: z.string().optional(),
  at: z.number().int(),
});
export type RecipientStatus = z.infer<typeof recipientStatusSchema>;

export const statusUpdateSchema = z.object({
  v: z.literal(1),
  messageId: z.string().min(1),
  fqdn: z.string(),
  /** The envelope sender, so a store that never saw the message queued can still list it. */
  mailfrom: z.string().optional(),
  receivedAt: z.number().int(),
  /** Attempts made so far for the recipients still queued (or for the last ones, when done). */
  attempts: z.number().int().nonnegative(),
  /** deferred: some recipients wait for a retry; done: none is left in the queue. */
  state: z.enum(['deferred', 'done']),
  nextAttemptAt: z.number().int().optional(),
  /** The outbound job holding the retry, so the post office can see whether it is being delivered right now. */
  retry: z.object({ server: z.string(), jobId: z.string() }).optional(),
  /** The recipients of this attempt; earlier recipients keep what earlier updates said. */
  recipients: z.array(recipientStatusSchema),
  at: z.number().int(),
});
export type StatusUpdate = z.infer<typeof statusUpdateSchema>;

export function decodeStatusUpdate(payload: Buffer): StatusUpdate {
  return statusUpdateSchema.parse(JSON.parse(payload.toString('utf8')));
}
