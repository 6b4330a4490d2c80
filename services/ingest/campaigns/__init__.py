"""Campaigns (docs/campaigns.md): the API, the pure rules, the SQL and the launcher that
streams an audience from PostgreSQL into Kafka."""
