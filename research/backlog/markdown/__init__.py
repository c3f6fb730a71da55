"""Markdown backlogs, kept as the researcher wrote them.

- ``dialects``: what the marks and labels of each dialect mean (the seed's conventions,
  GitHub task lists, Obsidian Tasks, Logseq);
- ``parse``: a document's text, read with markdown-it-py into items, tasks, notes and
  outcomes, each with the lines and columns it came from;
- ``plan`` (with ``render`` and ``source``): the backlog's changes edited into that text,
  line by line, leaving every other byte as it was;
- ``documents``: import, export and sync against the database.
"""
