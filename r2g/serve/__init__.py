"""`r2g serve`: a page where a reader tries a trained run on an image (run.py: the run and what it answers;
server.py: the HTTP server and its one-at-a-time queue; page.html: the page)."""
