"""Live dashboards: Bokeh components fed from scheduler snapshots.

- :mod:`.feed` keeps the latest snapshot and a bounded history of task and transfer events,
  shared by every plot that reads it (no Bokeh import);
- :mod:`.palette` colours (one per function, the same in every plot) and number formats;
- :mod:`.components` the plots, each a Bokeh model plus ``update()``; :mod:`.panels` the
  header, navigation, task groups, system and task control; :mod:`.graph` the task graph;
- :mod:`.server` ``start_dashboard(scheduler, ...)``: the pages served by the scheduler;
- :mod:`.http` the HTTP layer around it: token gate, ``/metrics``, ``/metrics.json``;
- :mod:`.hosts` which ``Host`` and websocket ``Origin`` it answers (DNS rebinding);
- :mod:`.widget` ``dashboard_widget(client)``: the same plots inline in a notebook.

Nothing here is imported by ``nbcluster`` itself: Bokeh takes most of a second to import.
"""
