import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import { IContext, IProject, requestAPI } from './api';
import { currentHub, sessionUrl } from './urls';

/** The left side panel listing the user's workbench projects and their sessions. */
export class WorkbenchPanel extends Widget {
  constructor() {
    super();
    this.id = 'workbench-panel';
    this.addClass('jp-workbench-panel');
    this.title.label = 'Workbench';
    this.title.caption = 'Workbench projects';
    this.title.iconClass = 'jp-workbench-icon';

    const header = document.createElement('div');
    header.className = 'jp-workbench-header';
    const heading = document.createElement('h2');
    heading.textContent = 'Workbench';
    const refresh = document.createElement('button');
    refresh.className = 'jp-workbench-refresh jp-mod-styled';
    refresh.textContent = 'Refresh';
    refresh.addEventListener('click', () => void this.refresh());
    header.append(heading, refresh);

    this._context.className = 'jp-workbench-context';
    this._error.className = 'jp-workbench-error';
    this._error.hidden = true;
    this._list.className = 'jp-workbench-projects';
    this.node.append(header, this._context, this._error, this._list);
  }

  /** Fetch the session context and the project list, and redraw. */
  async refresh(): Promise<void> {
    const request = ++this._requests;
    try {
      const [context, listing] = await Promise.all([
        requestAPI<IContext>('context'),
        requestAPI<{ projects: IProject[] }>('projects')
      ]);
      if (request === this._requests) {
        this._showError('');
        this._render(context, listing.projects);
      }
    } catch (reason) {
      if (request === this._requests) {
        this._showError(`Could not load projects: ${(reason as Error).message}`);
      }
    }
  }

  protected onAfterShow(msg: Message): void {
    void this.refresh();
  }

  private _showError(message: string): void {
    this._error.textContent = message;
    this._error.hidden = !message;
  }

  private _render(context: IContext, projects: IProject[]): void {
    this._context.textContent = context.project
      ? `Session: ${context.project}${context.read_only ? ' (read-only)' : ''}`
      : 'Not in a workbench session';
    const hub = currentHub();
    this._list.replaceChildren(
      ...projects.map(project => {
        const item = document.createElement('li');
        item.className = 'jp-workbench-project';
        item.dataset.project = project.name;
        item.dataset.role = project.role;
        item.dataset.running = String(project.running);
        item.dataset.current = String(project.current);
        item.classList.toggle('jp-mod-current', project.current);
        item.title = project.description;

        const name = document.createElement('span');
        name.className = 'jp-workbench-project-name';
        name.textContent = project.name;
        const role = document.createElement('span');
        role.className = 'jp-workbench-project-role';
        role.textContent = project.role;
        item.append(name, role);

        if (hub) {
          const link = document.createElement('a');
          link.className = 'jp-workbench-session-link';
          link.href = sessionUrl(hub, project.name, project.running);
          link.target = '_blank';
          link.rel = 'noopener';
          link.textContent = project.running ? 'Open' : 'Start';
          item.append(link);
        }
        return item;
      })
    );
  }

  private _context = document.createElement('div');
  private _error = document.createElement('div');
  private _list = document.createElement('ul');
  private _requests = 0;
}
