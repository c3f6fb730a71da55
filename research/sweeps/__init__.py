"""Search sweeps (`research sweep`): a space of parameter values, a study that asks for trials
(Optuna, ask and tell), trials run as ordinary runs on any executor, and what they found.

``space`` parses and checks ``--space``; ``study`` is the Optuna side; ``drive`` creates, runs
and resumes a sweep; ``show`` tells what it found.
"""
