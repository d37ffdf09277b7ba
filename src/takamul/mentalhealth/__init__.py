"""Mental health in primary care (issue 15)."""
