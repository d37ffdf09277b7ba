"""Caregivers: their own ZBI-12 burden screen, a support referral at high burden, and the
facility's registry of caregivers at high burden (see ``docs/caregivers.md``)."""
