"""``fedcoord report``: a run directory as a Markdown report with PNG plots."""
