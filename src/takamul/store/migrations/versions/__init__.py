"""The revisions, oldest first by their ``down_revision`` links (a package only so the wheel
ships them)."""
