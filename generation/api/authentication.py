"""Token authentication that refuses malformed keys before they reach the database.

DRF's ``TokenAuthentication`` looks up whatever follows ``Token``; a NUL byte in it made
PostgreSQL refuse the query (a 500). Keys are 40 hexadecimal characters (``Token.generate_key``),
so anything else is an invalid token, answered 401 like a wrong one.
"""

import re

from rest_framework import authentication, exceptions

TOKEN_KEY = re.compile(r"[0-9a-f]{40}")


class TokenAuthentication(authentication.TokenAuthentication):
    def authenticate_credentials(self, key):
        if not TOKEN_KEY.fullmatch(key):
            raise exceptions.AuthenticationFailed("Invalid token.")
        return super().authenticate_credentials(key)
