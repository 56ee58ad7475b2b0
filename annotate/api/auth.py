"""Token authentication with the token and its user read by one prepared statement (see ``rows``).

The same checks and answers as DRF's ``TokenAuthentication`` (it is a subclass: the header parsing, the 401
and its ``WWW-Authenticate`` are DRF's); only the lookup differs.
"""

from rest_framework import authentication, exceptions

from .. import sql


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        token = sql.token_with_user(key)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return (token.user, token)
