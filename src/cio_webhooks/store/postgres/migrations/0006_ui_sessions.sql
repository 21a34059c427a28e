-- Dashboard sessions a logout ended (store/_contract.py Watch.revoke_session): every
-- process on the store refuses their cookies until they expire.  Same columns and
-- meanings as the SQLite inbox's.
CREATE TABLE ui_revoked_sessions (
    sid   text PRIMARY KEY,           -- the session id inside the signed cookie
    until double precision NOT NULL   -- the cookie's expiry, unix seconds: prune drops it after
);
