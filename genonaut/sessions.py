"""Database sessions whose keys are checked before any query (``SESSION_ENGINE``).

Django accepts any session cookie of eight characters or more and looks it up; a NUL byte in
it made PostgreSQL refuse the query (a 500). Keys Django makes are 32 characters of
``[a-z0-9]``; any other cookie is treated as no session at all.
"""

import re

from django.contrib.sessions.backends import db

SESSION_KEY = re.compile(r"[a-z0-9]{32}")


class SessionStore(db.SessionStore):
    def _validate_session_key(self, key):
        return bool(key) and SESSION_KEY.fullmatch(key) is not None
