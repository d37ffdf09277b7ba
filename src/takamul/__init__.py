"""Takamul: a shared FHIR R4 health record for integrated care and health equity."""

__version__ = "0.1.0"
