import * as React from 'react';

/** The server's message for one form field, shown next to it (nothing when there is none). */
export function FieldError(props: { field: string; message?: string | null }): JSX.Element | null {
  if (!props.message) {
    return null;
  }
  return (
    <div className="jp-workbench-field-error" data-field={props.field} role="alert">
      {props.message}
    </div>
  );
}
