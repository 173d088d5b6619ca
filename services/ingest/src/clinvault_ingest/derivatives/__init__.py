"""Derivatives: de-identified copies made for one authorization, reviewed before release."""
