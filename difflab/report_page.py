"""The page around the sections of ``difflab report``: inline CSS and one inline script, nothing external.

The Content-Security-Policy forbids every network fetch (images must be ``data:`` URIs), so a
report that opens correctly once opens the same way offline, from a mail attachment or a USB stick.
The script marks ``<body data-images-ok="N" data-images-failed="M">`` once the page has loaded,
which is how the browser test (tests/test_report.py) checks that every embedded image decoded.
"""

from __future__ import annotations

from string import Template

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; padding: 1em 2em;
       max-width: 1100px; color: #1d1d1f; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
h3 { font-size: 1.05em; margin: 1em 0 0.4em; }
nav a { margin-right: 1em; }
pre { background: #f5f5f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; max-height: 32em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f0f0f3; }
img { display: block; max-width: 100%; }
img.samples { image-rendering: pixelated; }
.grids { display: flex; flex-wrap: wrap; gap: 2em; }
.row { display: flex; align-items: center; gap: 0.6em; margin: 2px 0; }
.row .label { min-width: 6em; text-align: right; font-size: 0.9em; }
.prompt { font-size: 0.8em; color: #555; margin: 0 0 0.4em 6.6em; max-width: 40em; }
.note, .missing { color: #666; font-size: 0.9em; }
.missing { font-style: italic; }
</style>
</head>
<body>
<h1>$title</h1>
<p class="note">$subtitle</p>
<nav>$nav</nav>
$body
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.dataset.imagesOk = String(ok);
  document.body.dataset.imagesFailed = String(images.length - ok);
});
</script>
</body>
</html>
""")
