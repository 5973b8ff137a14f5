"""The store engines (SQLite on real files, Redis on a real redis-server) and the job service on each."""
