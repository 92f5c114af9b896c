// The left sidebar: the clusters this Jupyter server knows, live, with their controls.
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import {
  ICluster,
  IPage,
  listClusters,
  listPages,
  scaleCluster,
  startCluster,
  stopCluster
} from './api';

export const POLL_MS = 2000;

export interface ISidebarOptions {
  openPlot: (cluster: ICluster, page: IPage) => void;
  insertConnect: (line: string) => void;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text) {
    node.textContent = text;
  }
  return node;
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) {
    return '?';
  }
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i++;
  }
  return `${n < 10 && i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

function summary(c: ICluster): string {
  if (c.workers === null) {
    return c.dashboard ? 'not answering' : 'no dashboard';
  }
  const parts = [`${c.workers} worker${c.workers === 1 ? '' : 's'}`];
  if (c.threads !== null && c.threads !== undefined) {
    parts.push(`${c.threads} thread${c.threads === 1 ? '' : 's'}`);
  }
  if (c.memory) {
    const limit = c.memory.limit ? ` / ${formatBytes(c.memory.limit)}` : '';
    parts.push(`${formatBytes(c.memory.process)}${limit}`);
  }
  return parts.join(' · ');
}

function taskLine(c: ICluster): string {
  if (!c.tasks) {
    return '';
  }
  const t = c.tasks;
  const get = (k: string) => t[k] || 0;
  const rate = c.tasks_per_second ? ` · ${c.tasks_per_second.toFixed(1)}/s` : '';
  return `tasks: ${get('processing')} running, ${get('waiting') + get('queued') + get('no-worker')} waiting, ${get('memory')} in memory, ${get('erred')} erred${rate}`;
}

/** One cluster's card; built once, its text updated on every poll. */
class ClusterCard {
  readonly node = el('li', 'nbcluster-card');
  private title = el('div', 'nbcluster-card-title');
  private figures = el('div', 'nbcluster-card-figures');
  private tasks = el('div', 'nbcluster-card-tasks');
  private note = el('div', 'nbcluster-card-note');
  private scaleInput = el('input', 'nbcluster-scale-input jp-mod-styled');
  private scaleButton = el('button', 'nbcluster-scale jp-mod-styled', 'Scale');
  private stopButton = el('button', 'nbcluster-stop jp-mod-styled jp-mod-warn', 'Stop');
  private connectButton = el('button', 'nbcluster-connect jp-mod-styled', 'Connect');
  private plots = el('div', 'nbcluster-plots');
  private pagesFor: string | null = null;
  cluster: ICluster;

  constructor(cluster: ICluster, private sidebar: ClusterSidebar) {
    this.cluster = cluster;
    this.node.dataset.id = cluster.id;
    this.scaleInput.type = 'number';
    this.scaleInput.min = '0';
    this.scaleInput.title = 'number of workers';
    this.scaleButton.onclick = () => void this.scale();
    this.scaleInput.onkeydown = e => {
      if (e.key === 'Enter') {
        void this.scale();
      }
    };
    this.stopButton.onclick = () => void this.stop();
    this.connectButton.onclick = () => {
      if (this.cluster.connect) {
        sidebar.options.insertConnect(this.cluster.connect);
      }
    };
    this.connectButton.title = 'insert a %cluster connect line in the current notebook';
    const controls = el('div', 'nbcluster-controls');
    controls.append(this.scaleInput, this.scaleButton, this.connectButton, this.stopButton);
    this.node.append(this.title, this.figures, this.tasks, controls, this.plots, this.note);
    this.update(cluster);
  }

  update(c: ICluster): void {
    this.cluster = c;
    this.title.textContent = c.scheduler || c.id;
    this.title.title = `${c.id} (${c.owner})`;
    this.node.dataset.owner = c.owner;
    this.figures.textContent = summary(c);
    this.tasks.textContent = taskLine(c);
    this.note.textContent = c.note;
    this.scaleInput.hidden = this.scaleButton.hidden = !c.can_scale;
    this.stopButton.hidden = !c.can_stop;
    this.connectButton.hidden = !c.connect;
    // the number the user is typing stays; otherwise follow the cluster
    if (document.activeElement !== this.scaleInput && c.workers !== null) {
      this.scaleInput.value = String(c.workers);
    }
    if (c.dashboard_base && this.pagesFor !== c.dashboard_base) {
      this.pagesFor = c.dashboard_base;
      void listPages(c.dashboard_base).then(pages => this.showPages(pages));
    }
  }

  private showPages(pages: IPage[]): void {
    this.plots.replaceChildren(
      ...pages.map(page => {
        const b = el('button', 'nbcluster-plot-button jp-mod-styled', page.title);
        b.dataset.page = page.path;
        b.title = `open ${page.title} beside the notebook`;
        b.onclick = () => this.sidebar.options.openPlot(this.cluster, page);
        return b;
      })
    );
  }

  private async scale(): Promise<void> {
    const n = Number(this.scaleInput.value);
    if (!Number.isInteger(n) || n < 0) {
      Notification.error(`Scale: ${this.scaleInput.value} is not a number of workers`);
      return;
    }
    this.scaleInput.blur();
    await this.sidebar.act(`scale to ${n}`, () => scaleCluster(this.cluster.id, n));
  }

  private async stop(): Promise<void> {
    const c = this.cluster;
    const result = await showDialog({
      title: 'Stop this cluster?',
      body:
        c.owner === 'server'
          ? `${c.scheduler}: its workers and scheduler stop.`
          : `${c.scheduler}: its scheduler process ends and its workers with it; the ` +
            'notebook that started it will find its cluster gone.',
      buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
    });
    if (result.button.accept) {
      await this.sidebar.act('stop', () => stopCluster(c.id));
    }
  }
}

export class ClusterSidebar extends Widget {
  private list = el('ul', 'nbcluster-card-list');
  private empty = el('div', 'nbcluster-empty', 'No clusters yet.');
  private newWorkers = el('input', 'nbcluster-new-workers jp-mod-styled');
  private error = el('div', 'nbcluster-error');
  private cards = new Map<string, ClusterCard>();
  private timer = 0;
  private busy = false;

  constructor(readonly options: ISidebarOptions) {
    super();
    this.id = 'nbcluster-sidebar';
    this.addClass('nbcluster-sidebar');
    this.title.caption = 'nbcluster clusters';
    const header = el('div', 'nbcluster-header');
    header.append(el('h2', 'nbcluster-heading', 'Clusters'));
    const form = el('div', 'nbcluster-new');
    this.newWorkers.type = 'number';
    this.newWorkers.min = '1';
    this.newWorkers.placeholder = 'workers';
    this.newWorkers.title = 'workers of the new cluster (empty: one per core)';
    const start = el('button', 'nbcluster-new-cluster jp-mod-styled jp-mod-accept', 'New cluster');
    start.title =
      'start a LocalCluster of processes in the Jupyter server; "Connect" then puts a ' +
      '%cluster connect line in your notebook';
    start.onclick = () => void this.start();
    form.append(this.newWorkers, start);
    this.node.append(header, form, this.error, this.empty, this.list);
  }

  protected onAfterAttach(): void {
    void this.refresh();
    this.timer = window.setInterval(() => {
      if (this.isVisible) {
        void this.refresh();
      }
    }, POLL_MS);
  }

  protected onBeforeDetach(): void {
    window.clearInterval(this.timer);
  }

  protected onAfterShow(): void {
    void this.refresh();
  }

  async refresh(force = false): Promise<void> {
    if (this.busy && !force) {
      return; // the previous poll has not answered yet
    }
    this.busy = true;
    try {
      this.show_(await listClusters());
      this.error.textContent = '';
    } catch (e) {
      this.error.textContent = `cannot list clusters: ${(e as Error).message}`;
    } finally {
      this.busy = false;
    }
  }

  private show_(clusters: ICluster[]): void {
    const seen = new Set<string>();
    for (const c of clusters) {
      seen.add(c.id);
      let card = this.cards.get(c.id);
      if (card) {
        card.update(c);
      } else {
        card = new ClusterCard(c, this);
        this.cards.set(c.id, card);
      }
      this.list.appendChild(card.node); // in the server's order
    }
    for (const [id, card] of this.cards) {
      if (!seen.has(id)) {
        card.node.remove();
        this.cards.delete(id);
      }
    }
    this.empty.hidden = clusters.length > 0;
  }

  /** Run a request, say what went wrong if it did, and refresh at once. */
  async act(what: string, request: () => Promise<any>): Promise<void> {
    try {
      await request();
    } catch (e) {
      Notification.error(`nbcluster: cannot ${what}: ${(e as Error).message}`);
    }
    await this.refresh(true);
  }

  private async start(): Promise<void> {
    const text = this.newWorkers.value.trim();
    const n = text ? Number(text) : null;
    if (n !== null && (!Number.isInteger(n) || n < 1)) {
      Notification.error(`New cluster: ${text} is not a number of workers`);
      return;
    }
    const id = Notification.emit('Starting a cluster…', 'in-progress', { autoClose: false });
    try {
      const reply = await startCluster(n);
      Notification.update({
        id,
        message: `Started ${reply.scheduler} (${reply.workers} workers)`,
        type: 'success',
        autoClose: 3000
      });
    } catch (e) {
      Notification.update({
        id,
        message: `nbcluster: cannot start a cluster: ${(e as Error).message}`,
        type: 'error',
        autoClose: false
      });
    }
    await this.refresh(true);
  }
}
