"""`research serve`: a local web view of the backlog, its runs, sweeps and reviews.

``server`` starts it (uvicorn, the token, run recovery); ``app`` holds the routes;
``pages`` reads what each page shows through the library the CLI uses; ``security`` the
token, Host and CSRF checks, headers and file confinement; ``svg`` the inline charts.
Templates and the one script live beside them (``templates/``, ``static/``).
"""
