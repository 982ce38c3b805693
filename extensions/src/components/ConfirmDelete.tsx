import * as React from 'react';

import { TranslationBundle } from '@jupyterlab/translation';

/**
 * Deleting needs the name typed again: an input and a button that stays disabled until the
 * typed text equals `name`.
 */
export function ConfirmDelete(props: {
  name: string;
  trans: TranslationBundle;
  onConfirm: (typed: string) => Promise<void>;
  onCancel: () => void;
}): JSX.Element {
  const { name, trans } = props;
  const [typed, setTyped] = React.useState('');
  const [busy, setBusy] = React.useState(false);
  const [error, setError] = React.useState<string | null>(null);
  const submit = async (event: React.FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await props.onConfirm(typed);
    } catch (reason) {
      setError((reason as Error).message);
      setBusy(false);
    }
  };
  return (
    <form className="jp-workbench-confirm-delete" onSubmit={submit}>
      <label className="jp-workbench-label">
        {trans.__('Type %1 to delete the project, its files and sessions', name)}
        <input
          className="jp-mod-styled jp-workbench-input jp-workbench-confirm-input"
          value={typed}
          autoFocus
          aria-label={trans.__('Project name to confirm')}
          onChange={e => setTyped(e.target.value)}
        />
      </label>
      {error && <div className="jp-workbench-field-error" role="alert">{error}</div>}
      <div className="jp-workbench-actions">
        <button
          type="button"
          className="jp-mod-styled jp-mod-reject jp-workbench-cancel"
          onClick={props.onCancel}
        >
          {trans.__('Cancel')}
        </button>
        <button
          type="submit"
          className="jp-mod-styled jp-mod-warn jp-workbench-confirm"
          disabled={busy || typed !== name}
        >
          {trans.__('Delete')}
        </button>
      </div>
    </form>
  );
}
