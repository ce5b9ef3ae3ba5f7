-- Roll-ups: one-minute and one-hour buckets of each metric's readings,
-- written by the hub's writer in the same transaction as the readings, so a
-- reading is never stored without its buckets. Buckets are by device time:
-- `bucket_ms` is the bucket's start, ms since the Unix epoch. `n` counts
-- every reading; `n_values`, `sum`, `min` and `max` only those with a value
-- (NaN and infinities are stored as NULL and count in `n` alone).
CREATE TABLE rollups_1m (
    metric    INTEGER NOT NULL REFERENCES metrics(id),
    bucket_ms INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    n_values  INTEGER NOT NULL,
    sum       REAL,
    min       REAL,
    max       REAL,
    first_ms  INTEGER NOT NULL,                    -- the earliest ts_ms in the bucket
    last_ms   INTEGER NOT NULL,                    -- the latest
    PRIMARY KEY (metric, bucket_ms)
) WITHOUT ROWID;

CREATE TABLE rollups_1h (
    metric    INTEGER NOT NULL REFERENCES metrics(id),
    bucket_ms INTEGER NOT NULL,
    n         INTEGER NOT NULL,
    n_values  INTEGER NOT NULL,
    sum       REAL,
    min       REAL,
    max       REAL,
    first_ms  INTEGER NOT NULL,
    last_ms   INTEGER NOT NULL,
    PRIMARY KEY (metric, bucket_ms)
) WITHOUT ROWID;

-- What a database written before this migration already holds.
INSERT INTO rollups_1m (metric, bucket_ms, n, n_values, sum, min, max, first_ms, last_ms)
SELECT metric, ts_ms - ts_ms % 60000, count(*), count(value), sum(value), min(value), max(value),
       min(ts_ms), max(ts_ms)
FROM samples GROUP BY metric, ts_ms - ts_ms % 60000;

INSERT INTO rollups_1h (metric, bucket_ms, n, n_values, sum, min, max, first_ms, last_ms)
SELECT metric, ts_ms - ts_ms % 3600000, count(*), count(value), sum(value), min(value), max(value),
       min(ts_ms), max(ts_ms)
FROM samples GROUP BY metric, ts_ms - ts_ms % 3600000;

-- Beside `readings`: the buckets with names, and the mean of the values.
CREATE VIEW readings_1m AS
SELECT d.device_id         AS device,
       m.name              AS metric,
       m.unit              AS unit,
       r.bucket_ms         AS ts_ms,
       r.n                 AS n,
       r.sum / r.n_values  AS mean,
       r.min               AS min,
       r.max               AS max
FROM rollups_1m r
JOIN metrics m ON m.id = r.metric
JOIN devices d ON d.id = m.device;

CREATE VIEW readings_1h AS
SELECT d.device_id         AS device,
       m.name              AS metric,
       m.unit              AS unit,
       r.bucket_ms         AS ts_ms,
       r.n                 AS n,
       r.sum / r.n_values  AS mean,
       r.min               AS min,
       r.max               AS max
FROM rollups_1h r
JOIN metrics m ON m.id = r.metric
JOIN devices d ON d.id = m.device;
