"""HTML views of a corpus and of runs: ``browse`` (a query as a gallery of clip previews),
``report`` (the demo's report page), ``svg`` (the inline charts both draw with). Pages are
self-contained: media as data: URIs, inline SVG, no CDN."""
