"""Who is calling (authentication.py, with principal_cache.py), what they may do on a model
(permissions.py), the model a request names (locators.py) and each route's access rule
(rules.py). The guard that applies them is edge/guard.py."""
