"""The secret a gateway shows a replica, one per deployment generation.

A replica runs whatever code its model brings, and its port can be reached by whatever
shares its network: the model server answers only requests carrying its generation's
secret (`/health` and `/metrics` stay open, for health checks and scrapers). The secret is an
HMAC of (model, generation) under a key derived from GREENROOM_SECRET_KEY, so the worker
that starts a replica and every gateway (Python or HAProxy) that reaches it compute the
same value without storing or passing it anywhere, and a replica that knows its own
secret learns nothing of another generation's. Never logged, never in a response.
"""

import hashlib
import hmac
from uuid import UUID

# The request header the gateways send, and the variable the model server reads it from.
HEADER = "X-Greenroom-Replica-Secret"
ENV = "MODEL_SERVER_GATEWAY_SECRET"


def generation_secret(secret_key: str, model_id: UUID, generation: int) -> str:
    """The secret of `model_id`'s `generation`: 64 hex characters."""
    # schemas.tokens.derive_key's scheme, not imported: the model server imports this
    # module, and its image holds no JWT library.
    key = hmac.new(secret_key.encode(), b"greenroom:replica-auth", hashlib.sha256).digest()
    return hmac.new(key, f"{model_id}:{generation}".encode(), hashlib.sha256).hexdigest()
