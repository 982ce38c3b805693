import * as React from 'react';

import { TranslationBundle } from '@jupyterlab/translation';
import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';

import { ConfirmDelete } from '../components/ConfirmDelete';
import { FieldError } from '../components/FieldError';
import { IProject, WorkbenchAPIError } from '../handler';
import { asAPIError, ProjectsModel } from '../models/projects';
import { currentHub, IHub, sessionUrl } from '../urls';

/** Fields of the "New project" form; a server error naming another field is shown on top. */
const FORM_FIELDS = ['name', 'description', 'template'];

/** The left side panel: the user's projects with their role and a link to each session. */
export class ProjectsPanel extends ReactWidget {
  constructor(options: { model: ProjectsModel; trans: TranslationBundle }) {
    super();
    this.model = options.model;
    this._trans = options.trans;
    this.id = 'workbench-panel';
    this.addClass('jp-workbench-panel');
    this.title.label = this._trans.__('Workbench');
    this.title.caption = this._trans.__('Workbench projects');
    this.title.iconClass = 'jp-workbench-icon';
  }

  readonly model: ProjectsModel;

  /** Open the "New project" form (the `workbench:new-project` command). */
  showNewProjectForm(): void {
    this._formOpen = true;
    this.update();
  }

  protected render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => (
          <ProjectsView
            model={this.model}
            trans={this._trans}
            formOpen={this._formOpen}
            onFormOpen={open => {
              this._formOpen = open;
              this.update();
            }}
          />
        )}
      </UseSignal>
    );
  }

  private _trans: TranslationBundle;
  private _formOpen = false;
}

function ProjectsView(props: {
  model: ProjectsModel;
  trans: TranslationBundle;
  formOpen: boolean;
  onFormOpen: (open: boolean) => void;
}): JSX.Element {
  const { model, trans } = props;
  const context = model.context;
  const hub = currentHub();
  const canCreate = context ? !context.read_only : false;
  return (
    <div className="jp-workbench-body">
      <div className="jp-workbench-header">
        <h2>{trans.__('Workbench')}</h2>
        <div className="jp-workbench-header-actions">
          {canCreate && !props.formOpen && (
            <button
              className="jp-mod-styled jp-mod-accept jp-workbench-new"
              onClick={() => props.onFormOpen(true)}
            >
              {trans.__('New project')}
            </button>
          )}
          <button
            className="jp-mod-styled jp-workbench-refresh"
            onClick={() => void model.refresh()}
          >
            {trans.__('Refresh')}
          </button>
        </div>
      </div>
      <div className="jp-workbench-context">
        {context
          ? context.project
            ? context.read_only
              ? trans.__('Session: %1 (read-only)', context.project)
              : trans.__('Session: %1', context.project)
            : trans.__('Not in a workbench session')
          : ''}
      </div>
      <div className="jp-workbench-error" hidden={!model.error} role="alert">
        {model.error ? trans.__('Could not load projects: %1', model.error.message) : ''}
      </div>
      {props.formOpen && (
        <NewProjectForm model={model} trans={trans} onDone={() => props.onFormOpen(false)} />
      )}
      {model.loaded && !model.projects.length && !model.error && (
        <div className="jp-workbench-empty">{trans.__('No projects yet.')}</div>
      )}
      <ul className="jp-workbench-projects">
        {model.projects.map(project => (
          <ProjectItem key={project.name} project={project} hub={hub} model={model} trans={trans} />
        ))}
      </ul>
    </div>
  );
}

function ProjectItem(props: {
  project: IProject;
  hub: IHub | null;
  model: ProjectsModel;
  trans: TranslationBundle;
}): JSX.Element {
  const { project, hub, model, trans } = props;
  const [confirming, setConfirming] = React.useState(false);
  const isAdmin = project.role === 'admin';
  const classes = ['jp-workbench-project'];
  if (project.current) {
    classes.push('jp-mod-current');
  }
  return (
    <li
      className={classes.join(' ')}
      data-project={project.name}
      data-role={project.role}
      data-running={String(!!project.running)}
      data-current={String(!!project.current)}
      title={project.description}
    >
      <div className="jp-workbench-project-row">
        <span className="jp-workbench-project-name">{project.name}</span>
        <span className="jp-workbench-project-role">{project.role}</span>
        {hub && (
          <a
            className="jp-workbench-session-link"
            href={sessionUrl(hub, project.name, !!project.running)}
            target="_blank"
            rel="noopener"
          >
            {project.running ? trans.__('Open') : trans.__('Start')}
          </a>
        )}
        {isAdmin && !project.current && !confirming && (
          <button
            className="jp-mod-styled jp-workbench-delete"
            title={trans.__('Delete project %1', project.name)}
            aria-label={trans.__('Delete project %1', project.name)}
            onClick={() => setConfirming(true)}
          >
            {trans.__('Delete')}
          </button>
        )}
      </div>
      {project.description && (
        <div className="jp-workbench-project-description">{project.description}</div>
      )}
      {confirming && (
        <ConfirmDelete
          name={project.name}
          trans={trans}
          onCancel={() => setConfirming(false)}
          onConfirm={typed => model.remove(project.name, typed)}
        />
      )}
    </li>
  );
}

function NewProjectForm(props: {
  model: ProjectsModel;
  trans: TranslationBundle;
  onDone: () => void;
}): JSX.Element {
  const { model, trans } = props;
  const [name, setName] = React.useState('');
  const [description, setDescription] = React.useState('');
  const [template, setTemplate] = React.useState('empty');
  const [busy, setBusy] = React.useState(false);
  const [error, setError] = React.useState<WorkbenchAPIError | null>(null);
  const [templatesError, setTemplatesError] = React.useState<string | null>(null);

  React.useEffect(() => {
    model.loadTemplates().catch(reason => setTemplatesError(asAPIError(reason).message));
  }, [model]);

  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await model.create({
        name,
        ...(description ? { description } : {}),
        template
      });
      props.onDone();
    } catch (reason) {
      setError(asAPIError(reason));
      setBusy(false);
    }
  };
  const fieldMessage = (field: string) => (error && error.field === field ? error.message : null);
  const generalError = error && !FORM_FIELDS.includes(error.field ?? '') ? error.message : null;
  const templates = model.templates.length
    ? model.templates
    : [{ name: 'empty', description: trans.__('An empty project') }];

  return (
    <form className="jp-workbench-new-project" onSubmit={submit}>
      <h3>{trans.__('New project')}</h3>
      <FieldError field="" message={generalError} />
      <label className="jp-workbench-label">
        {trans.__('Name')}
        <input
          name="name"
          className="jp-mod-styled jp-workbench-input"
          value={name}
          required
          autoFocus
          aria-invalid={!!fieldMessage('name')}
          onChange={e => setName(e.target.value)}
        />
      </label>
      <FieldError field="name" message={fieldMessage('name')} />
      <label className="jp-workbench-label">
        {trans.__('Description')}
        <input
          name="description"
          className="jp-mod-styled jp-workbench-input"
          value={description}
          onChange={e => setDescription(e.target.value)}
        />
      </label>
      <FieldError field="description" message={fieldMessage('description')} />
      <label className="jp-workbench-label">
        {trans.__('Template')}
        <div className="jp-select-wrapper">
          <select
            name="template"
            className="jp-mod-styled jp-workbench-select"
            value={template}
            onChange={e => setTemplate(e.target.value)}
          >
            {templates.map(t => (
              <option key={t.name} value={t.name} title={t.description}>
                {t.name}
              </option>
            ))}
          </select>
        </div>
      </label>
      <FieldError field="template" message={fieldMessage('template') ?? templatesError} />
      <div className="jp-workbench-actions">
        <button
          type="button"
          className="jp-mod-styled jp-mod-reject jp-workbench-cancel"
          onClick={props.onDone}
        >
          {trans.__('Cancel')}
        </button>
        <button
          type="submit"
          className="jp-mod-styled jp-mod-accept jp-workbench-create"
          disabled={busy || !name}
        >
          {busy ? trans.__('Creating…') : trans.__('Create')}
        </button>
      </div>
    </form>
  );
}
