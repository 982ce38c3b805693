import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';

import { WorkbenchPanel } from './panel';

/** Adds the "Workbench" panel to the left area. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: '@jupyter-workbench/lab:panel',
  description: 'A left side panel listing your workbench projects and their sessions.',
  autoStart: true,
  optional: [ILayoutRestorer],
  activate: (app: JupyterFrontEnd, restorer: ILayoutRestorer | null) => {
    const panel = new WorkbenchPanel();
    app.shell.add(panel, 'left', { rank: 200 });
    restorer?.add(panel, panel.id);
    void panel.refresh();
  }
};

export default plugin;
