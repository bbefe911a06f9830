"""The dashboard: server-rendered pages (Jinja2) for people, served by the API at ``/``.

Why this stack: every page is a plain HTML document the server renders from the same
service functions as the JSON API, so it works with the keyboard, a screen reader and
the back button, needs no build step, and shows data even before its script runs. The
one thing a page needs a script for is following a live stream (the browser's own
EventSource) and drawing curves, which ``static/app.js`` does in about 300 lines with
uPlot (50 KB, vendored under ``static/vendor``). htmx was the alternative; here every
interaction is either a navigation (a link, a GET form) or a stream update that arrives
as JSON, so it would have added a library without removing code.
"""
