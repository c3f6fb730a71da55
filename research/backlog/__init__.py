"""The backlog: items, their notes and outcomes, and the Markdown documents they come from.

- ``items``: creating, changing, moving, deleting and undoing (every change an event);
- ``markdown``: documents read from and written back to Markdown files.

Importing this package imports nothing heavy: ``items`` brings the ORM, ``markdown.reader``
reads what an export needs straight from SQLite.
"""
