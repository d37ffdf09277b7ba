"""Care plans from the care programmes (issue 16; see docs/careplans.md)."""
