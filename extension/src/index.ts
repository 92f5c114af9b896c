// nbcluster in JupyterLab: a sidebar of clusters, and dashboard plots as panels beside the
// notebook, loaded through the Jupyter server's proxy (works on JupyterHub and Binder).
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Clipboard, MainAreaWidget, Notification, WidgetTracker } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IFrame, LabIcon } from '@jupyterlab/ui-components';

import { ICluster, IPage } from './api';
import { ClusterSidebar } from './sidebar';

const OPEN_PLOT = 'nbcluster:open-plot';

const ICON = new LabIcon({
  name: 'nbcluster:clusters',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<circle cx="12" cy="5" r="3"/><circle cx="5" cy="18" r="3"/><circle cx="19" cy="18" r="3"/>' +
    '<path d="M11 7.5h2v3.3l4.8 4.3-1.3 1.5L12 12.6l-4.5 4-1.3-1.5 4.8-4.3z"/></g></svg>'
});

interface IPlotArgs {
  url: string;
  label: string;
}

function plotPanel(args: IPlotArgs): MainAreaWidget<IFrame> {
  // Bokeh's page needs its scripts; it is served by this Jupyter server (same origin)
  const content = new IFrame({ sandbox: ['allow-scripts', 'allow-same-origin'] });
  content.url = args.url;
  content.addClass('nbcluster-plot');
  const panel = new MainAreaWidget({ content });
  panel.id = `nbcluster-plot-${encodeURIComponent(args.url)}`;
  panel.title.label = args.label;
  panel.title.icon = ICON;
  panel.title.closable = true;
  panel.addClass('nbcluster-plot-panel');
  return panel;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'nbcluster:plugin',
  description: 'nbcluster clusters and dashboard plots in JupyterLab',
  autoStart: true,
  requires: [ILabShell],
  optional: [ILayoutRestorer, INotebookTracker],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    restorer: ILayoutRestorer | null,
    notebooks: INotebookTracker | null
  ) => {
    const tracker = new WidgetTracker<MainAreaWidget<IFrame>>({ namespace: 'nbcluster-plot' });
    const args = new Map<MainAreaWidget<IFrame>, IPlotArgs>();

    app.commands.addCommand(OPEN_PLOT, {
      label: a => `nbcluster: ${(a as any).label ?? 'dashboard plot'}`,
      execute: a => {
        const plot = a as unknown as IPlotArgs;
        const open = tracker.find(w => args.get(w)?.url === plot.url);
        if (open) {
          shell.activateById(open.id);
          return open;
        }
        const panel = plotPanel(plot);
        args.set(panel, plot);
        panel.disposed.connect(() => args.delete(panel));
        // docked beside the notebook being worked on, else in the main area
        const ref = notebooks?.currentWidget?.id;
        shell.add(panel, 'main', ref ? { mode: 'split-right', ref } : undefined);
        void tracker.add(panel);
        shell.activateById(panel.id);
        return panel;
      }
    });
    if (restorer) {
      // plots open at the last session reopen (their cluster may be gone: the page says so)
      void restorer.restore(tracker, {
        command: OPEN_PLOT,
        args: w => ({ ...(args.get(w) as any) }),
        name: w => args.get(w)?.url ?? w.id
      });
    }

    const sidebar = new ClusterSidebar({
      openPlot: (cluster: ICluster, page: IPage) => {
        const port = (cluster.scheduler || '').split(':').pop();
        void app.commands.execute(OPEN_PLOT, {
          url: cluster.dashboard_base + page.path,
          label: `${page.title}${port ? ` (${port})` : ''}`
        });
      },
      insertConnect: (line: string) => {
        const notebook = notebooks?.currentWidget;
        if (!notebook) {
          Clipboard.copyToSystem(line);
          Notification.info(`No notebook open: "${line}" copied to the clipboard`, {
            autoClose: 4000
          });
          return;
        }
        NotebookActions.insertBelow(notebook.content);
        notebook.content.activeCell?.model.sharedModel.setSource(line);
        shell.activateById(notebook.id);
      }
    });
    sidebar.title.icon = ICON;
    shell.add(sidebar, 'left', { rank: 250 });
    if (restorer) {
      restorer.add(sidebar, sidebar.id);
    }
  }
};

export default plugin;
