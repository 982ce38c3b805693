import { ServerConnection } from '@jupyterlab/services';

import { WorkbenchAPIError, WorkbenchClient } from '../handler';

/** A client whose requests go to `answer` instead of the network; `requests` records them. */
function clientAnswering(answer: (request: Request) => Response) {
  const requests: Request[] = [];
  const fetch = async (input: RequestInfo | URL) => {
    const request = input as Request;
    requests.push(request);
    return answer(request);
  };
  const serverSettings = ServerConnection.makeSettings({
    baseUrl: 'http://localhost/user/dana/alpha/',
    fetch: fetch as typeof globalThis.fetch,
    token: ''
  });
  return { client: new WorkbenchClient({ serverSettings }), requests };
}

/** The URL a request went to, without the cache-busting timestamp ServerConnection adds. */
function target(request: Request): string {
  return request.url.replace(/[?&]\d+$/, '');
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json' }
  });
}

describe('WorkbenchClient', () => {
  beforeEach(() => {
    document.cookie = '_xsrf=xsrf-123; path=/';
  });

  it('lists projects through the session server with the XSRF token', async () => {
    const { client, requests } = clientAnswering(() =>
      json(200, { projects: [{ name: 'alpha', description: '', role: 'admin' }] })
    );
    const projects = await client.listProjects();
    expect(projects.map(p => p.name)).toEqual(['alpha']);
    expect(target(requests[0])).toBe('http://localhost/user/dana/alpha/workbench/projects');
    expect(requests[0].headers.get('X-XSRFToken')).toBe('xsrf-123');
  });

  it('sends a create as JSON with the XSRF token to the forwarding route', async () => {
    const { client, requests } = clientAnswering(() =>
      json(201, { name: 'gamma', description: '', role: 'admin' })
    );
    const project = await client.createProject({ name: 'gamma', template: 'python-starter' });
    expect(project.name).toBe('gamma');
    const request = requests[0];
    expect(request.method).toBe('POST');
    expect(target(request)).toBe('http://localhost/user/dana/alpha/workbench/api/v1/projects');
    expect(request.headers.get('X-XSRFToken')).toBe('xsrf-123');
    expect(request.headers.get('Content-Type')).toBe('application/json');
    expect(await request.json()).toEqual({ name: 'gamma', template: 'python-starter' });
  });

  it('parses the server error: status, message and field', async () => {
    const { client } = clientAnswering(() =>
      json(400, { status: 400, message: 'name must be a lowercase slug', field: 'name' })
    );
    const error = await client.createProject({ name: 'Bad Name' }).catch(e => e);
    expect(error).toBeInstanceOf(WorkbenchAPIError);
    expect(error.status).toBe(400);
    expect(error.message).toBe('name must be a lowercase slug');
    expect(error.field).toBe('name');
  });

  it('falls back to the status line when the error is not JSON', async () => {
    const { client } = clientAnswering(
      () => new Response('<html>Bad gateway</html>', { status: 502, statusText: 'Bad Gateway' })
    );
    const error = await client.listTemplates().catch(e => e);
    expect(error).toBeInstanceOf(WorkbenchAPIError);
    expect(error.status).toBe(502);
    expect(error.message).toBe('Bad Gateway');
    expect(error.field).toBeUndefined();
  });

  it('deletes with the typed confirmation and resolves on 204', async () => {
    const { client, requests } = clientAnswering(() => new Response(null, { status: 204 }));
    await expect(client.deleteProject('beta', 'beta')).resolves.toBeUndefined();
    expect(requests[0].method).toBe('DELETE');
    expect(target(requests[0])).toBe(
      'http://localhost/user/dana/alpha/workbench/api/v1/projects/beta?confirm=beta'
    );
    expect(requests[0].headers.get('X-XSRFToken')).toBe('xsrf-123');
  });

  it('escapes names in paths', async () => {
    const { client, requests } = clientAnswering(() => json(200, { role: 'viewer', user: 'a b' }));
    await client.putCollaborator('p', 'a b', 'viewer');
    expect(target(requests[0])).toBe(
      'http://localhost/user/dana/alpha/workbench/api/v1/projects/p/collaborators/a%20b'
    );
  });
});
