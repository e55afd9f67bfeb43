"""What people look at: the HTML report (``onnxinit report``) and the variance plot
(``analyze --plot``).

- :mod:`.content`: what a report shows, as plain data taken from the analysis, its JSON
  (``analyze --json``) and its ``check`` findings (``check --format json``): nothing is
  recomputed here;
- :mod:`.stages`: consecutive tensors grouped into stages (residual blocks, layers) so that a
  500-layer model gives a table one can read;
- :mod:`.scales`: the per-layer weight scales between a model and its rescaled copy;
- :mod:`.plot`: the variance-by-depth figure (matplotlib, Agg backend);
- :mod:`.html`: the self-contained HTML page.
"""
