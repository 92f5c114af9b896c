// Talking to nbcluster's Jupyter server extension (nbcluster/jupyter/server_extension.py).
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One cluster as `GET nbcluster/clusters` describes it. */
export interface ICluster {
  id: string;
  scheduler: string | null;
  workers: number | null;
  threads?: number | null;
  memory?: { results: number; process: number; limit: number | null } | null;
  tasks?: { [state: string]: number } | null;
  tasks_per_second?: number | null;
  dashboard: string | null; // the status page, through the Jupyter server
  dashboard_base: string | null; // where its other pages are (ends with "/")
  owner: 'server' | 'scheduler' | 'kernel' | 'remote' | 'terminal';
  can_scale: boolean;
  can_stop: boolean;
  note: string;
  connect: string | null; // a `%cluster connect ...` line, when a notebook can use one
}

/** A dashboard page a panel can show. */
export interface IPage {
  path: string; // relative to the dashboard's base
  title: string;
}

// what every dashboard serves (nbcluster/dashboard/server.py); newer ones list more
export const DEFAULT_PAGES: IPage[] = [
  { path: 'status', title: 'Status' },
  { path: 'task-stream', title: 'Task stream' },
  { path: 'memory', title: 'Memory' },
  { path: 'progress', title: 'Progress' },
  { path: 'workers', title: 'Workers' }
];
// where a dashboard lists its pages, if it does
const PAGE_LISTS = ['pages.json', 'individual-plots.json'];

export class ApiError extends Error {}

async function call(path: string, init: RequestInit = {}): Promise<any> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, path);
  // makeRequest adds Jupyter's token or XSRF header: POSTs need one
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const why = (body && body.message) || text || response.statusText;
    throw new ApiError(`${response.status}: ${why}`);
  }
  return body;
}

export async function listClusters(): Promise<ICluster[]> {
  const body = await call('nbcluster/clusters');
  return (body && body.clusters) || [];
}

export async function startCluster(workers: number | null): Promise<any> {
  const body = workers === null ? {} : { workers };
  return call('nbcluster/clusters', { method: 'POST', body: JSON.stringify(body) });
}

export async function scaleCluster(id: string, workers: number): Promise<any> {
  return call(`nbcluster/clusters/${encodeURIComponent(id)}/scale`, {
    method: 'POST',
    body: JSON.stringify({ workers })
  });
}

export async function stopCluster(id: string): Promise<any> {
  return call(`nbcluster/clusters/${encodeURIComponent(id)}/stop`, {
    method: 'POST',
    body: '{}'
  });
}

/** The pages a dashboard lists (any of the shapes below), else the default ones. */
export async function listPages(base: string): Promise<IPage[]> {
  for (const name of PAGE_LISTS) {
    try {
      const response = await fetch(base + name, { credentials: 'same-origin' });
      if (!response.ok) {
        continue;
      }
      const pages = parsePages(await response.json());
      if (pages.length) {
        return pages;
      }
    } catch {
      // not listed there: try the next, then the defaults
    }
  }
  return DEFAULT_PAGES;
}

/** `{"pages": [...]}` or `[...]` of `{path|url|name, title}` or of paths, or `{title: path}`. */
export function parsePages(data: any): IPage[] {
  const list = data && !Array.isArray(data) && Array.isArray(data.pages) ? data.pages : data;
  const pages: IPage[] = [];
  const add = (path: any, title: any) => {
    if (typeof path === 'string' && path) {
      path = path.replace(/^\.?\//, '');
      pages.push({ path, title: typeof title === 'string' && title ? title : path });
    }
  };
  if (Array.isArray(list)) {
    for (const item of list) {
      if (typeof item === 'string') {
        add(item, item);
      } else if (item && typeof item === 'object') {
        add(item.path ?? item.url ?? item.name, item.title ?? item.name);
      }
    }
  } else if (list && typeof list === 'object') {
    for (const [title, path] of Object.entries(list)) {
      add(path, title);
    }
  }
  return pages;
}
