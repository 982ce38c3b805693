import { WorkbenchAPIError, WorkbenchClient } from '../handler';
import { ProjectsModel } from '../models/projects';

const context = { project: 'alpha', read_only: false, api_url: '', user: 'dana' };

/** A client stub whose `listProjects` fails while `failing` is set. */
function stubClient() {
  const state = { failing: false, calls: 0 };
  const client = {
    getContext: jest.fn(async () => context),
    listProjects: jest.fn(async () => {
      state.calls++;
      if (state.failing) {
        throw new WorkbenchAPIError(502, 'control plane down');
      }
      return [{ name: 'alpha', description: '', role: 'admin' }];
    })
  } as unknown as WorkbenchClient;
  return { client, state };
}

/** Let pending promise callbacks run (the model awaits the client). */
async function flush() {
  for (let i = 0; i < 5; i++) {
    await Promise.resolve();
  }
}

describe('ProjectsModel', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('fires changed with the projects after a refresh', async () => {
    const { client } = stubClient();
    const model = new ProjectsModel({ client });
    const changed = jest.fn();
    model.changed.connect(changed);
    await model.refresh();
    expect(changed).toHaveBeenCalledTimes(1);
    expect(model.projects.map(p => p.name)).toEqual(['alpha']);
    expect(model.context).toEqual(context);
    expect(model.error).toBeNull();
    model.dispose();
  });

  it('backs off 5 s doubling to 60 s on errors and resets on success', async () => {
    const { client, state } = stubClient();
    const model = new ProjectsModel({ client, interval: 5000, maxInterval: 60000 });
    state.failing = true;
    model.start();
    await flush();
    expect(state.calls).toBe(1);
    expect(model.error?.message).toBe('control plane down');

    const delays: number[] = [];
    for (let i = 0; i < 5; i++) {
      delays.push(model.delay);
      jest.advanceTimersByTime(model.delay - 1);
      await flush();
      expect(state.calls).toBe(i + 1); // not yet
      jest.advanceTimersByTime(1);
      await flush();
      expect(state.calls).toBe(i + 2);
    }
    expect(delays).toEqual([10000, 20000, 40000, 60000, 60000]);

    state.failing = false;
    jest.advanceTimersByTime(model.delay);
    await flush();
    expect(model.error).toBeNull();
    expect(model.delay).toBe(5000);
    model.dispose();
  });

  it('stops polling when disposed', async () => {
    const { client, state } = stubClient();
    const model = new ProjectsModel({ client, interval: 5000 });
    model.start();
    await flush();
    expect(state.calls).toBe(1);
    model.dispose();
    jest.advanceTimersByTime(120000);
    await flush();
    expect(state.calls).toBe(1);
    expect(jest.getTimerCount()).toBe(0);
  });
});
