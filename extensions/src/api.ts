import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** `GET /workbench/context`: the session's project and permissions. */
export interface IContext {
  project: string;
  read_only: boolean;
  api_url: string;
  user: string;
}

/** A project from `GET /workbench/projects`. */
export interface IProject {
  name: string;
  description: string;
  role: string;
  running: boolean;
  current: boolean;
}

/**
 * GET a `/workbench/` endpoint of the session's server and return its JSON.
 *
 * Throws an Error carrying the server's message when the request fails.
 */
export async function requestAPI<T>(endpoint: string): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'workbench', endpoint);
  const response = await ServerConnection.makeRequest(url, {}, settings);
  const text = await response.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON: report the status line below.
  }
  if (!response.ok) {
    const detail = data?.message || response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return data as T;
}
