"""Authentication (authentication.py), permissions (permissions.py), the model a request
names (locators.py), each route's access rule (rules.py) and the guard that applies them."""
