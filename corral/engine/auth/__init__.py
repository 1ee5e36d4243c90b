"""Who is calling: callers and identities, user tokens (OIDC/JWT, the node's own issuer), API keys,
and the authenticator that turns credentials into a caller."""

from .authenticator import Authenticator
from .callers import Auth, Caller, MachineKey, UserIdentity, identity_from_claims, new_admin_key
from .service import AuthService

__all__ = [
    "Auth", "AuthService", "Authenticator", "Caller", "MachineKey", "UserIdentity",
    "identity_from_claims", "new_admin_key",
]
