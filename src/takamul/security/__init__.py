"""Security and privacy of the shared record: audit, de-identification, authorisation."""
