"""Data worlds (toy, real), dataset descriptions, splits and the decode cache."""
