-- The hub's schema. People query this file with sqlite3 and their own tools:
-- the `readings` view is the stable surface; the tables behind it may grow
-- columns. Migrations are append-only: fix a mistake with a new file.

-- One row per device. Tokens are stored only as SHA-256 hashes.
CREATE TABLE devices (
    id           INTEGER PRIMARY KEY,
    device_id    TEXT    NOT NULL UNIQUE,          -- the id devices send in Hello
    name         TEXT,                             -- for people; optional
    token_hash   BLOB    UNIQUE,                   -- NULL for self-registered devices
    model        TEXT,
    firmware     TEXT,
    created_ms   INTEGER NOT NULL,
    revoked_ms   INTEGER,                          -- set once revoked; never cleared
    last_seen_ms INTEGER,
    -- Highest batch seq committed: a batch at or below it is a resend and is
    -- acknowledged without being stored again.
    last_seq     INTEGER NOT NULL DEFAULT 0
);

-- One row per (device, metric name). Devices refer to metrics by a small id
-- declared in Hello; the hub maps it to this row on every connection.
CREATE TABLE metrics (
    id     INTEGER PRIMARY KEY,
    device INTEGER NOT NULL REFERENCES devices(id),
    name   TEXT    NOT NULL,
    unit   TEXT    NOT NULL,
    UNIQUE (device, name)
);

-- One row per reading. `pos` is the storage position: it only ever grows
-- (AUTOINCREMENT: never reused, even after retention deletes everything) and
-- is the id of the reading's live event.
CREATE TABLE samples (
    pos    INTEGER PRIMARY KEY AUTOINCREMENT,
    metric INTEGER NOT NULL REFERENCES metrics(id),
    ts_ms  INTEGER NOT NULL,                       -- device time, ms since the Unix epoch
    value  REAL                                    -- NULL when the device sent NaN or infinity
);

-- "One device, one metric, a time range": metrics(device, name) finds the
-- metric row, this index the range.
CREATE INDEX samples_by_metric_time ON samples (metric, ts_ms);

CREATE VIEW readings AS
SELECT s.pos        AS pos,
       d.device_id  AS device,
       m.name       AS metric,
       m.unit       AS unit,
       s.ts_ms      AS ts_ms,
       s.value      AS value
FROM samples s
JOIN metrics m ON m.id = s.metric
JOIN devices d ON d.id = m.device;
