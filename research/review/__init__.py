"""Periodic review reports: what moved, finished, ran and stalled in a week, a month, a quarter
or a range.

``period`` parses the period; ``data`` loads what the review needs in a handful of
whole-table or range queries (plain sqlite3); ``report.build_review`` turns it into a plain
dict, which is also the ``--format json`` output; ``markdown`` and ``html`` render that
dict, ``charts`` draws its charts with matplotlib (imported lazily, Agg backend), and
``output.write_review`` is the one call the command makes.

Semantics:

* Periods are local calendar days, ``[start, end)``: an ISO 8601 week (Monday
  to Sunday), a calendar month, a calendar quarter, or ``--since``/``--until``
  (both inclusive). Their bounds are converted to UTC to compare with the
  stored timestamps. The previous period, used for metric changes, is the
  week, month or quarter before, or the same number of days right before a range.
* Status changes come from the event log (undone events are skipped); an item
  created with a status does not count as a change. Items are counted once per
  target status: "started" means moved to active. Items and checklist tasks are
  counted apart: a task moved to done is "ticked".
* The backlog's charts: checklist progress of each direction (the nearest item
  above a task) at the start and end of the period; open items and open tasks
  at the end of each day, replayed from the event log; and every status move
  of the period, as a flow from one status to another.
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
* Stuck: items planned or paused for at least ``stale_days`` (since they last
  changed status, else since they were created) at the end of the period (or
  now, if sooner); and active (or writing-up) items without a run, note or
  change (their own or any descendant's) for as long. Headings over other items
  are not directions themselves and are left out, here and in next focus.
* Next focus: open items (checklist tasks left to their items) ranked by
  priority, then composite score.
"""
