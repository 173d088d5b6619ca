"""Upload invitations: a one-patient, expiring link a patient uses to send photos."""
