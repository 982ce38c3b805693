import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

import { WorkbenchClient } from './handler';
import { ProjectsPanel } from './mainviews/ProjectsPanel';
import { ProjectsModel } from './models/projects';
import { IWorkbenchClient } from './tokens';

const PLUGIN_ID = '@jupyter-workbench/lab:panel';

/** Command ids. */
export namespace CommandIDs {
  export const refreshProjects = 'workbench:refresh-projects';
  export const newProject = 'workbench:new-project';
}

/** Adds the "Workbench" projects panel to the left area, with its commands and settings. */
const plugin: JupyterFrontEndPlugin<IWorkbenchClient> = {
  id: PLUGIN_ID,
  description: 'A left side panel listing your workbench projects and their sessions.',
  autoStart: true,
  provides: IWorkbenchClient,
  optional: [ILayoutRestorer, ICommandPalette, ISettingRegistry, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    translator: ITranslator | null
  ): IWorkbenchClient => {
    const trans = (translator ?? nullTranslator).load('jupyter_workbench');
    const client = new WorkbenchClient({ serverSettings: app.serviceManager.serverSettings });
    const model = new ProjectsModel({ client });
    const panel = new ProjectsPanel({ model, trans });
    app.shell.add(panel, 'left', { rank: 200 });
    restorer?.add(panel, panel.id);

    app.commands.addCommand(CommandIDs.refreshProjects, {
      label: trans.__('Refresh Workbench Projects'),
      caption: trans.__('Reload the list of your workbench projects'),
      execute: () => model.refresh()
    });
    app.commands.addCommand(CommandIDs.newProject, {
      label: trans.__('New Workbench Project…'),
      caption: trans.__('Create a workbench project from a template'),
      execute: () => {
        app.shell.activateById(panel.id);
        panel.showNewProjectForm();
      }
    });
    const category = trans.__('Workbench');
    palette?.addItem({ command: CommandIDs.refreshProjects, category });
    palette?.addItem({ command: CommandIDs.newProject, category });

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            model.interval = settings.get('pollInterval').composite as number;
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => console.warn('Workbench: could not load settings', reason))
        .then(() => model.start());
    } else {
      model.start();
    }
    panel.disposed.connect(() => model.dispose());
    return { client };
  }
};

export default plugin;
