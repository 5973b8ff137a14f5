"""The HTTP face of a real gateway process: the OctoAI facade, the dashboard, metrics, webhooks, and the fakes."""
