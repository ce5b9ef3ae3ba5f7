-- Access: API keys with a role and, optionally, the device groups they are
-- limited to; and the groups devices belong to.
--
-- A key is shown once, when it is made; the hub keeps its SHA-256 (as for
-- device tokens: a key carries 256 random bits). The hub reads this table
-- every half second, so a key added, revoked or expired by `hub key` while
-- the hub runs takes effect within a second, open live streams included.
CREATE TABLE api_keys (
    id         INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    key_sha256 BLOB    NOT NULL UNIQUE,
    role       TEXT    NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    -- JSON array of group names; empty: every device.
    groups     TEXT    NOT NULL DEFAULT '[]',
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER,
    revoked_ms INTEGER
);

-- A device belongs to any number of groups (`floor-2`, `freezers`).
--   SELECT d.device_id FROM device_groups g JOIN devices d ON d.id = g.device
--   WHERE g.grp = 'floor-2';
CREATE TABLE device_groups (
    device INTEGER NOT NULL REFERENCES devices (id),
    grp    TEXT    NOT NULL,
    PRIMARY KEY (device, grp)
) WITHOUT ROWID;

CREATE INDEX device_groups_by_group ON device_groups (grp, device);

-- Keys as people read them (never the key itself).
CREATE VIEW api_key_list AS
SELECT name, role, groups,
       datetime(created_ms / 1000, 'unixepoch') AS created,
       datetime(expires_ms / 1000, 'unixepoch') AS expires,
       datetime(revoked_ms / 1000, 'unixepoch') AS revoked
FROM api_keys;
