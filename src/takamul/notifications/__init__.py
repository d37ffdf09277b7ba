"""Notifications: topic-based Subscriptions as the Subscriptions R5 Backport IG (STU 1.1) defines
them on R4, delivered from a durable outbox over the ``rest-hook`` channel (see
docs/notifications.md)."""
