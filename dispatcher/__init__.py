"""The paydispatch daemon."""
