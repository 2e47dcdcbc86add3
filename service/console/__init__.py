"""The web console at /ui (issue 17): static pages, the JSON routes they need, live changes."""
