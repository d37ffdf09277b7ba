"""Care programmes on the shared record: chronic-disease registries with HEARTS statuses,
preventive schedules with care gaps, overdue lists and indicators (docs/programmes.md)."""
