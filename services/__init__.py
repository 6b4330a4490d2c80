"""Herald's services: ingest, scheduler, dispatcher, reports (and the gateway simulator)."""
