"""The patient upload portal: an invitation link opens a small, accessible upload page."""
