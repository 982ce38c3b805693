import { IDisposable } from '@lumino/disposable';
import { ISignal, Signal } from '@lumino/signaling';

import {
  IContext,
  IProject,
  IProjectCreate,
  ITemplate,
  WorkbenchAPIError,
  WorkbenchClient
} from '../handler';

/**
 * The projects the user can see, kept fresh by polling.
 *
 * Polls every `interval` ms; after a failure the delay doubles up to `maxInterval`, and the
 * first success resets it. `changed` fires whenever the list, the context or the error changes.
 */
export class ProjectsModel implements IDisposable {
  constructor(options: ProjectsModel.IOptions) {
    this.client = options.client;
    this._interval = options.interval ?? 5000;
    this._maxInterval = options.maxInterval ?? 60000;
    this._delay = this._interval;
  }

  readonly client: WorkbenchClient;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get projects(): readonly IProject[] {
    return this._projects;
  }

  get context(): IContext | null {
    return this._context;
  }

  get templates(): readonly ITemplate[] {
    return this._templates;
  }

  /** The last refresh's error, or null after a success. */
  get error(): WorkbenchAPIError | null {
    return this._error;
  }

  /** Whether the first refresh has finished (successfully or not). */
  get loaded(): boolean {
    return this._loaded;
  }

  /** The delay before the next poll, in ms. */
  get delay(): number {
    return this._delay;
  }

  get isDisposed(): boolean {
    return this._isDisposed;
  }

  /** Change the polling interval (from the settings); takes effect at the next poll. */
  set interval(value: number) {
    this._interval = Math.max(1000, value);
    if (!this._error) {
      this._delay = this._interval;
    }
  }

  /** Start polling: refresh now, then keep refreshing. */
  start(): void {
    if (this._isDisposed || this._started) {
      return;
    }
    this._started = true;
    void this._tick();
  }

  /** Fetch the context and the projects now. */
  async refresh(): Promise<void> {
    const request = ++this._requests;
    try {
      const [context, projects] = await Promise.all([
        this._context ? Promise.resolve(this._context) : this.client.getContext(),
        this.client.listProjects()
      ]);
      if (request !== this._requests || this._isDisposed) {
        return;
      }
      this._context = context;
      this._projects = projects;
      this._error = null;
      this._delay = this._interval;
    } catch (reason) {
      if (request !== this._requests || this._isDisposed) {
        return;
      }
      this._error = asAPIError(reason);
      this._delay = Math.min(this._delay * 2, this._maxInterval);
    }
    this._loaded = true;
    this._changed.emit();
  }

  /** Load the templates for the "New project" form (once; errors are left to the form). */
  async loadTemplates(): Promise<readonly ITemplate[]> {
    if (!this._templates.length) {
      this._templates = await this.client.listTemplates();
      this._changed.emit();
    }
    return this._templates;
  }

  /** Create a project and refresh; a WorkbenchAPIError names the field to fix. */
  async create(body: IProjectCreate): Promise<IProject> {
    const project = await this.client.createProject(body);
    await this.refresh();
    return project;
  }

  /** Delete a project (`confirm` repeats its name) and refresh. */
  async remove(name: string, confirm: string): Promise<void> {
    await this.client.deleteProject(name, confirm);
    await this.refresh();
  }

  dispose(): void {
    if (this._isDisposed) {
      return;
    }
    this._isDisposed = true;
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    Signal.clearData(this);
  }

  private async _tick(): Promise<void> {
    this._timer = null;
    await this.refresh();
    if (!this._isDisposed) {
      this._timer = setTimeout(() => void this._tick(), this._delay);
    }
  }

  private _changed = new Signal<this, void>(this);
  private _projects: IProject[] = [];
  private _templates: ITemplate[] = [];
  private _context: IContext | null = null;
  private _error: WorkbenchAPIError | null = null;
  private _loaded = false;
  private _interval: number;
  private _maxInterval: number;
  private _delay: number;
  private _timer: ReturnType<typeof setTimeout> | null = null;
  private _requests = 0;
  private _started = false;
  private _isDisposed = false;
}

export namespace ProjectsModel {
  export interface IOptions {
    client: WorkbenchClient;
    /** Poll interval in ms while requests succeed (default 5 s). */
    interval?: number;
    /** Longest delay between polls after repeated failures (default 60 s). */
    maxInterval?: number;
  }
}

/** Any rejection as a WorkbenchAPIError. */
export function asAPIError(reason: unknown): WorkbenchAPIError {
  if (reason instanceof WorkbenchAPIError) {
    return reason;
  }
  return new WorkbenchAPIError(0, reason instanceof Error ? reason.message : String(reason));
}
