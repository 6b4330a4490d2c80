"""reports: message status and timeline in PostgreSQL, metrics, and the read API."""
