"""The dashboard: server-rendered pages (Jinja2) for people, served by the API at ``/``,
with a small script that follows the live streams and draws curves (uPlot, vendored)."""
