"""Herald's common library: contracts, settings, Kafka and PostgreSQL helpers."""
