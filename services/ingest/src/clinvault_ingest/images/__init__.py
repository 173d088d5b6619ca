"""Images: streaming upload, status, care-copy reads for a purpose, crypto-shred."""
