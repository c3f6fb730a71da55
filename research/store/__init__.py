"""The database: where it lives and how it is opened (``db``), its schema's history
(``migrations``) and its tables (``models``). Everything above reads and writes through here."""
