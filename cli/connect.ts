import { BeanstalkClient, type BeanstalkAddress } from '../shared/beanstalk.ts';
import { errorMessage } from '../shared/errors.ts';
import { CliError, EXIT } from './args.ts';

/**
 * One connection per server for the duration of a command. No automatic reconnect: a
 * command that loses its connection stops and says so (reserved jobs go back to ready on
 * their own when the connection closes).
 */
export async function withClient<T>(address: BeanstalkAddress, use: (client: BeanstalkClient) => Promise<T>): Promise<T> {
  const client = new BeanstalkClient(address, { autoReconnect: false, connectTimeoutMs: 5000 });
  try {
    await client.connect();
  } catch (err) {
    await client.close();
    throw new CliError('UNREACHABLE', errorMessage(err), EXIT.failure, { cause: err });
  }
  try {
    return await use(client);
  } finally {
    await client.close();
  }
}
