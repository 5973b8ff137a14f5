"""The clients as users run them: the Python client, its CLI, Node.js."""
