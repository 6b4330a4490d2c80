"""ingest: validates message requests (HTTP and the trigger topic) and gateway receipts."""
