"""What several test modules share that is not a process: builders of jobs, settings and a running service."""
