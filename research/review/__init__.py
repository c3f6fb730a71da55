"""Periodic review reports: what moved, finished, ran and stalled in a week, a month or a range.

``period`` parses the period; ``data`` loads what the review needs in a handful of
whole-table or range queries (plain sqlite3); ``report.build_review`` turns it into a plain
dict, which is also the ``--format json`` output; ``markdown`` and ``html`` render that
dict, ``charts`` draws its charts with matplotlib (imported lazily, Agg backend), and
``output.write_review`` is the one call the command makes.

Semantics:

* Periods are local calendar days, ``[start, end)``: an ISO 8601 week (Monday
  to Sunday), a calendar month, or ``--since``/``--until`` (both inclusive).
  Their bounds are converted to UTC to compare with the stored timestamps. The
  previous period, used for metric changes, is the week or month before, or
  the same number of days right before a range.
* Status changes come from the event log (undone events are skipped); an item
  created with a status does not count as a change. Items are counted once per
  target status: "started" means moved to active.
* The backlog (statuses, priorities, tree) is shown as it stood at the end of
  the period: later changes are rewound from the event log.
* Runs are counted by when they started (started) and ended (succeeded; failed,
  which includes timed out and interrupted runs).
* A note belongs to the period its journal date falls in (its creation time
  when it has no date).
* An experiment's key metric is its linked notebook's ``best`` rule
  (``max:throughput``), else the first numeric metric its runs recorded; a
  metric without a rule is minimized when its name says loss, error, latency,
  time or memory, and maximized otherwise.
* Stuck: active (or writing-up) items without a run, note or change (their own
  or any descendant's) for ``stale_days`` before the end of the period (or now,
  if sooner); and planned high/critical items not started.
* Next focus: open items (checklist tasks left to their items) ranked by
  priority, then composite score.
"""
