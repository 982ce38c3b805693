import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** Roles a user holds on a project, weakest first. */
export type Role = 'viewer' | 'operator' | 'contributor' | 'admin';

/** `GET /workbench/context`: the session's project and permissions. */
export interface IContext {
  project: string;
  read_only: boolean;
  api_url: string;
  user: string;
}

/** A project (openapi.yaml `Project`), with `running` and `current` when listed by the session. */
export interface IProject {
  name: string;
  description: string;
  owner?: string;
  visibility?: string;
  created?: string;
  updated?: string;
  role: Role | string;
  path?: string;
  running?: boolean;
  current?: boolean;
}

/** `POST /projects` body (openapi.yaml `ProjectCreate`). */
export interface IProjectCreate {
  name: string;
  description?: string;
  visibility?: string;
  owner?: string;
  template?: string;
  git_url?: string;
}

/** `PATCH /projects/{name}` body (openapi.yaml `ProjectUpdate`). */
export interface IProjectUpdate {
  description?: string;
  visibility?: string;
}

/** A built-in project template (`GET /templates`). */
export interface ITemplate {
  name: string;
  description: string;
}

/** A resource profile (openapi.yaml `Profile`). */
export interface IProfile {
  name: string;
  display_name: string;
  cpu: number;
  memory?: string | number;
  gpu: number;
  groups: string[];
}

/** A project's collaborator (openapi.yaml `Collaborator`). */
export interface ICollaborator {
  user: string;
  role: Role | string;
}

/** A project session (openapi.yaml `Session`). */
export interface ISession {
  user: string;
  name: string;
  ready: boolean;
  pending: 'spawn' | 'stop' | null;
  url: string;
  started: string | null;
  last_activity: string | null;
}

/** The error body every workbench endpoint answers with (openapi.yaml `Error`). */
export interface IErrorBody {
  status: number;
  message: string;
  field?: string;
}

/** A failed workbench request: the server's status, message and the field to fix, if named. */
export class WorkbenchAPIError extends Error {
  constructor(status: number, message: string, field?: string) {
    super(message);
    this.name = 'WorkbenchAPIError';
    this.status = status;
    this.field = field;
  }

  /** Build the error from a failed response, reading the server's JSON error body if any. */
  static async fromResponse(response: Response): Promise<WorkbenchAPIError> {
    let body: Partial<IErrorBody> | null = null;
    try {
      const text = await response.text();
      body = text ? JSON.parse(text) : null;
    } catch {
      // Not JSON (a proxy's HTML page): fall back to the status line.
    }
    const message =
      (body && typeof body.message === 'string' && body.message) ||
      response.statusText ||
      `HTTP ${response.status}`;
    const field = body && typeof body.field === 'string' ? body.field : undefined;
    return new WorkbenchAPIError(response.status, message, field);
  }

  readonly status: number;
  readonly field?: string;
}

/**
 * The one client of the workbench API for the JupyterLab panels.
 *
 * Every request goes through the session's Jupyter server with
 * `ServerConnection.makeRequest`, which adds the XSRF token and the server's auth:
 * `/workbench/context` and `/workbench/projects` are the server's own endpoints; the other
 * control-plane paths (openapi.yaml) go to its forwarding route `/workbench/api/v1/<path>`.
 */
export class WorkbenchClient {
  constructor(options: WorkbenchClient.IOptions = {}) {
    this.serverSettings = options.serverSettings ?? ServerConnection.makeSettings();
  }

  readonly serverSettings: ServerConnection.ISettings;

  /** Send a request to a `/workbench/` endpoint; resolve to its JSON (or undefined for 204). */
  async request<T>(endpoint: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.serverSettings.baseUrl, 'workbench', endpoint);
    const headers = new Headers(init.headers);
    if (init.body !== undefined && !headers.has('Content-Type')) {
      headers.set('Content-Type', 'application/json');
    }
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(
        url,
        { ...init, headers },
        this.serverSettings
      );
    } catch (reason) {
      throw new WorkbenchAPIError(0, `Could not reach the server: ${(reason as Error).message}`);
    }
    if (!response.ok) {
      throw await WorkbenchAPIError.fromResponse(response);
    }
    if (response.status === 204) {
      return undefined as T;
    }
    const text = await response.text();
    try {
      return (text ? JSON.parse(text) : undefined) as T;
    } catch {
      throw new WorkbenchAPIError(response.status, 'The server sent a response that is not JSON');
    }
  }

  /** A control-plane path such as `/projects`, through the session's forwarding route. */
  private _api<T>(path: string, init: RequestInit = {}): Promise<T> {
    return this.request<T>(URLExt.join('api/v1', path), init);
  }

  getContext(): Promise<IContext> {
    return this.request<IContext>('context');
  }

  /** The caller's projects, each with `running` and `current`. */
  async listProjects(): Promise<IProject[]> {
    return (await this.request<{ projects: IProject[] }>('projects')).projects;
  }

  createProject(body: IProjectCreate): Promise<IProject> {
    return this._api<IProject>('projects', { method: 'POST', body: JSON.stringify(body) });
  }

  getProject(name: string): Promise<IProject> {
    return this._api<IProject>(`projects/${enc(name)}`);
  }

  patchProject(name: string, body: IProjectUpdate): Promise<IProject> {
    return this._api<IProject>(`projects/${enc(name)}`, {
      method: 'PATCH',
      body: JSON.stringify(body)
    });
  }

  /** Delete a project; `confirm` must repeat its name (the API refuses otherwise). */
  deleteProject(name: string, confirm: string): Promise<void> {
    return this._api<void>(`projects/${enc(name)}?confirm=${enc(confirm)}`, {
      method: 'DELETE'
    });
  }

  async listTemplates(): Promise<ITemplate[]> {
    return (await this._api<{ templates: ITemplate[] }>('templates')).templates;
  }

  async listProfiles(): Promise<IProfile[]> {
    return (await this._api<{ profiles: IProfile[] }>('profiles')).profiles;
  }

  async listCollaborators(project: string): Promise<ICollaborator[]> {
    return (
      await this._api<{ collaborators: ICollaborator[] }>(
        `projects/${enc(project)}/collaborators`
      )
    ).collaborators;
  }

  putCollaborator(project: string, user: string, role: Role): Promise<ICollaborator> {
    return this._api<ICollaborator>(`projects/${enc(project)}/collaborators/${enc(user)}`, {
      method: 'PUT',
      body: JSON.stringify({ role })
    });
  }

  deleteCollaborator(project: string, user: string): Promise<void> {
    return this._api<void>(`projects/${enc(project)}/collaborators/${enc(user)}`, {
      method: 'DELETE'
    });
  }

  async listSessions(project: string): Promise<ISession[]> {
    return (await this._api<{ sessions: ISession[] }>(`projects/${enc(project)}/sessions`))
      .sessions;
  }
}

export namespace WorkbenchClient {
  export interface IOptions {
    /** The session server's connection settings (tests pass their own). */
    serverSettings?: ServerConnection.ISettings;
  }
}

function enc(value: string): string {
  return encodeURIComponent(value);
}
