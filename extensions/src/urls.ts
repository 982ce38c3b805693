import { PageConfig, URLExt } from '@jupyterlab/coreutils';

/** Where the hub is, from the page config JupyterHub sets for a single-user server. */
export interface IHub {
  host: string;
  prefix: string;
  user: string;
}

/** The hub this session runs under, or null when JupyterLab runs outside JupyterHub. */
export function currentHub(): IHub | null {
  const prefix = PageConfig.getOption('hubPrefix');
  const user = PageConfig.getOption('hubUser');
  if (!prefix || !user) {
    return null;
  }
  return { host: PageConfig.getOption('hubHost'), prefix, user };
}

/**
 * The URL that opens `project`'s session: its JupyterLab if the session is running,
 * else the hub's spawn page for the named server `<user>/<project>`.
 */
export function sessionUrl(hub: IHub, project: string, running: boolean): string {
  const user = encodeURIComponent(hub.user);
  const server = encodeURIComponent(project);
  if (running) {
    const base = hub.prefix.replace(/hub\/?$/, '');
    return hub.host + URLExt.join(base, 'user', user, server, 'lab');
  }
  return hub.host + URLExt.join(hub.prefix, 'spawn', user, server);
}
