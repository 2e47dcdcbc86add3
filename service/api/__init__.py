"""The API's surfaces, one module per surface; handlers only."""
