-- Device configuration: what people want each device to run (desired) and
-- what the device answered (reported), as AWS IoT's shadows and Azure's
-- twins keep them.
--
-- Every change is a `config` event in `events`, at a position of the one
-- sequence (the live stream carries it and resumes past it): a desired
-- change holds the whole new configuration, its version and who made it;
-- a reported one the version the device answered, whether it runs it, and
-- what it said. Retention keeps them: they are the history.
--
-- `config_state` is where each device stands, written by the writer in the
-- same transaction as the event that changed it, so the two never
-- disagree. A desired change takes the version one above the stored one
-- or is not stored at all (`If-Match` races, on one hub or a cluster).
-- `protocol`, `deliveries` and `delivered_ms` are this hub's own
-- bookkeeping of sending it: a device that never answers is sent a
-- version three times (at connections), then shown as not answering.
CREATE TABLE config_state (
    device           INTEGER PRIMARY KEY REFERENCES devices (id),
    desired          TEXT    NOT NULL DEFAULT '{}',   -- JSON object
    desired_version  INTEGER NOT NULL DEFAULT 0,
    desired_ms       INTEGER,                         -- the hub's clock
    desired_by       TEXT,
    -- The last version the device runs (0: none yet).
    reported_version INTEGER NOT NULL DEFAULT 0,
    reported_ms      INTEGER,
    -- The device's last answer: the version, whether it took it, why not.
    answered_version INTEGER,
    answered_ok      INTEGER,
    answered_detail  TEXT,
    answered_ms      INTEGER,
    -- The protocol version of the device's last connection that could
    -- have been sent the desired version.
    protocol         INTEGER,
    deliveries       INTEGER NOT NULL DEFAULT 0,      -- of the desired version
    delivered_ms     INTEGER
);

CREATE INDEX events_config ON events (device, pos) WHERE kind = 'config';

-- Where each device stands, for sqlite3 users:
--   SELECT device, desired_version, reported_version, state FROM device_config;
--   SELECT device, json_extract(desired, '$.sample_interval_ms') FROM device_config;
CREATE VIEW device_config AS
SELECT d.device_id       AS device,
       c.desired         AS desired,
       c.desired_version AS desired_version,
       c.desired_by      AS desired_by,
       c.desired_ms      AS desired_ms,
       c.reported_version AS reported_version,
       c.reported_ms     AS reported_ms,
       c.answered_version AS answered_version,
       c.answered_ok     AS answered_ok,
       c.answered_detail AS answered_detail,
       CASE
           WHEN c.desired_version = 0 THEN 'none'
           WHEN c.reported_version >= c.desired_version THEN 'applied'
           WHEN c.answered_version >= c.desired_version AND NOT c.answered_ok THEN 'refused'
           WHEN c.protocol < 3 THEN 'unsupported'
           WHEN c.deliveries >= 3 THEN 'unanswered'
           ELSE 'pending'
       END               AS state
FROM config_state c JOIN devices d ON d.id = c.device;

-- Every change, newest last:
--   SELECT device, side, version, by, ok, detail, datetime(ts_ms / 1000, 'unixepoch')
--   FROM config_history ORDER BY pos DESC LIMIT 20;
CREATE VIEW config_history AS
SELECT e.pos                              AS pos,
       d.device_id                        AS device,
       json_extract(e.body, '$.side')     AS side,
       json_extract(e.body, '$.version')  AS version,
       json_extract(e.body, '$.desired')  AS desired,
       json_extract(e.body, '$.by')       AS by,
       json_extract(e.body, '$.ok')       AS ok,
       json_extract(e.body, '$.detail')   AS detail,
       e.ts_ms                            AS ts_ms
FROM events e JOIN devices d ON d.id = e.device
WHERE e.kind = 'config';
