/**
 * The variables Kubernetes puts into every pod for every Service of its namespace
 * (docker-links style, https://kubernetes.io/docs/concepts/services-networking/service/#environment-variables):
 * the Service name upper-cased with `-` as `_`, then `_SERVICE_HOST`, `_SERVICE_PORT`,
 * `_SERVICE_PORT_<NAME>` for a named port, `_PORT` and `_PORT_<port>_TCP[_PROTO|_PORT|_ADDR]`.
 */
export function kubernetesServiceEnv(service: string, clusterIp: string, port: number, portName?: string): Record<string, string> {
  const name = service.toUpperCase().replaceAll('-', '_');
  const url = `tcp://${clusterIp}:${port}`;
  return {
    [`${name}_SERVICE_HOST`]: clusterIp,
    [`${name}_SERVICE_PORT`]: String(port),
    ...(portName ? { [`${name}_SERVICE_PORT_${portName.toUpperCase().replaceAll('-', '_')}`]: String(port) } : {}),
    [`${name}_PORT`]: url,
    [`${name}_PORT_${port}_TCP`]: url,
    [`${name}_PORT_${port}_TCP_PROTO`]: 'tcp',
    [`${name}_PORT_${port}_TCP_PORT`]: String(port),
    [`${name}_PORT_${port}_TCP_ADDR`]: clusterIp,
  };
}

/** What a pod sees in a namespace with Services for every hedwig tier and beanstalkd, under plain and `hedwig-` names. */
export function kubernetesHedwigEnv(): Record<string, string> {
  return {
    ...kubernetesServiceEnv('postoffice', '10.96.0.10', 8025, 'https'),
    ...kubernetesServiceEnv('mailman', '10.96.0.11', 2525, 'smtp'),
    ...kubernetesServiceEnv('worker', '10.96.0.12', 9103, 'ops'),
    ...kubernetesServiceEnv('beanstalkd', '10.96.0.13', 11300),
    ...kubernetesServiceEnv('hedwig-postoffice', '10.96.0.20', 8025, 'https'),
    ...kubernetesServiceEnv('hedwig-mailman', '10.96.0.21', 2525),
    ...kubernetesServiceEnv('hedwig-worker', '10.96.0.22', 9103),
    // Names people have in their environment for their own reasons.
    WORKER_ID: '3',
    MAILMAN_HOST: 'mailman.internal',
    POSTOFFICE_URL: 'https://postoffice.example.com',
  };
}
