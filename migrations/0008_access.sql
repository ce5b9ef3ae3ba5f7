-- Access: API keys with a role and, optionally, the device groups they are
-- limited to; the groups devices belong to; and the audit trail.
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

-- The audit trail: each admin action and each command sent through the
-- API is an `audit` event, at a position of the one sequence like every
-- other event, so admins follow it on the live stream and resume past it.
-- A key's change concerns no device: `events.device` may now be NULL. A
-- column's NOT NULL cannot be dropped in SQLite, so the table is built
-- again (events are few: statuses, alerts and audit entries), and the
-- views over it with it, unchanged.
DROP VIEW alerts;
DROP VIEW alert_events;
DROP VIEW device_events;
CREATE TABLE events_new (
    pos    INTEGER PRIMARY KEY,
    device INTEGER REFERENCES devices(id),         -- NULL: an event of no device
    ts_ms  INTEGER NOT NULL,                        -- the hub's clock, ms since the epoch
    kind   TEXT    NOT NULL,
    body   TEXT    NOT NULL
);
INSERT INTO events_new (pos, device, ts_ms, kind, body)
    SELECT pos, device, ts_ms, kind, body FROM events;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_time ON events(ts_ms);
CREATE INDEX events_alerts ON events (pos) WHERE kind = 'alert';
CREATE INDEX events_audit ON events (pos) WHERE kind = 'audit';

CREATE VIEW device_events AS
    SELECT e.pos, d.device_id AS device, e.ts_ms, e.kind, e.body
    FROM events e JOIN devices d ON d.id = e.device;

CREATE VIEW alert_events AS
SELECT e.pos                                          AS pos,
       coalesce(json_extract(e.body, '$.alert'), e.pos) AS alert,
       d.device_id                                    AS device,
       json_extract(e.body, '$.rule')                 AS rule,
       json_extract(e.body, '$.metric')               AS metric,
       json_extract(e.body, '$.state')                AS state,
       json_extract(e.body, '$.severity')             AS severity,
       json_extract(e.body, '$.value')                AS value,
       json_extract(e.body, '$.cause')                AS cause,   -- the reading's position
       json_extract(e.body, '$.message')              AS message,
       json_extract(e.body, '$.by')                   AS by,
       json_extract(e.body, '$.note')                 AS note,
       e.ts_ms                                        AS ts_ms,
       json_extract(e.body, '$.definition')           AS definition
FROM events e JOIN devices d ON d.id = e.device
WHERE e.kind = 'alert';

CREATE VIEW alerts AS
SELECT f.alert            AS id,
       f.device           AS device,
       f.rule             AS rule,
       f.metric           AS metric,
       f.severity         AS severity,
       f.message          AS message,
       f.value            AS value,
       f.ts_ms            AS fired_ms,
       s.state            AS state,
       a.ts_ms            AS acknowledged_ms,
       a.by               AS acknowledged_by,
       a.note             AS note,
       r.ts_ms            AS resolved_ms,
       f.definition       AS definition
FROM alert_events f
-- SQLite takes the bare `state` from the row holding max(pos).
JOIN (SELECT alert, state, max(pos) FROM alert_events GROUP BY alert) s ON s.alert = f.alert
LEFT JOIN alert_events a ON a.alert = f.alert AND a.state = 'acknowledged'
LEFT JOIN alert_events r ON r.alert = f.alert AND r.state = 'resolved'
WHERE f.state = 'firing';

-- Who did what, newest last; retention keeps it.
--   SELECT datetime(ts_ms / 1000, 'unixepoch'), by, action, device, detail
--   FROM audit ORDER BY pos DESC LIMIT 20;
CREATE VIEW audit AS
SELECT e.pos                              AS pos,
       e.ts_ms                            AS ts_ms,
       json_extract(e.body, '$.by')       AS by,
       json_extract(e.body, '$.action')   AS action,
       d.device_id                        AS device,
       json_extract(e.body, '$.detail')   AS detail
FROM events e LEFT JOIN devices d ON d.id = e.device
WHERE e.kind = 'audit';
