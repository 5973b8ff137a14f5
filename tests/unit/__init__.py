"""Parts on their own, in this process: no server, no store engine of their own."""
