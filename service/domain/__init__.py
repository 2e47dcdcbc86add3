"""What the API's surfaces do below their handlers; no HTTP here."""
