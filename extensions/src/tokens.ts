import { Token } from '@lumino/coreutils';

import { WorkbenchClient } from './handler';

/** The workbench API client, for other panels (jobs, models…) to share. */
export interface IWorkbenchClient {
  readonly client: WorkbenchClient;
}

export const IWorkbenchClient = new Token<IWorkbenchClient>(
  '@jupyter-workbench/lab:IWorkbenchClient',
  'The typed client of the workbench API that every Workbench panel uses.'
);
