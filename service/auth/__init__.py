"""Authentication, permissions and the route guard."""
