"""Notebook runs: linking notebooks to items (``links``), planning runs (``plan``), every state
change of a run (``lifecycle``), reading them back (``query``, ``where``) and running several at
once on this machine (``pool``)."""
