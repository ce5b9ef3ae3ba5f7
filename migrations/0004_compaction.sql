-- Compacted readings: once a span of storage positions (a slab, 100,000
-- positions) is older than the hub's --compact-after, the writer moves its
-- readings out of `samples` into one row per metric here, as JSON text that
-- SQLite itself reads (json_each). A reading is in exactly one of the two
-- tables; the `readings` view shows both.
--
-- `readings` holds a block's readings in position order, each as
-- [pos residual, time residual, value]: the position is
-- first_pos + i * pos_step + residual and the time first_ms + i * ms_step
-- + residual, i counting from 0. Devices sample at a steady rate, so the
-- residuals are small numbers and a reading costs about 20 bytes instead of
-- the 48 of a row and its index. `value` is null where the device sent NaN
-- or an infinity.
CREATE TABLE sample_blocks (
    id        INTEGER PRIMARY KEY,
    metric    INTEGER NOT NULL REFERENCES metrics(id),
    first_pos INTEGER NOT NULL,                    -- the block's first (lowest) position
    last_pos  INTEGER NOT NULL,                    -- and its last
    pos_step  INTEGER NOT NULL,
    first_ms  INTEGER NOT NULL,                    -- ts_ms of the block's first reading
    ms_step   INTEGER NOT NULL,
    min_ms    INTEGER NOT NULL,                    -- the earliest ts_ms in the block
    max_ms    INTEGER NOT NULL,                    -- the latest
    n         INTEGER NOT NULL,
    readings  TEXT    NOT NULL
);

-- "One metric, a time range": the blocks that may hold it.
CREATE INDEX sample_blocks_by_metric_time ON sample_blocks (metric, max_ms);
-- "Storage order from a position": the blocks of a slab.
CREATE INDEX sample_blocks_by_pos ON sample_blocks (first_pos);

-- The compacted readings one per row, with the bounds of their block so
-- that a query can name the blocks it needs (block_max_ms >= from, ...).
CREATE VIEW compacted_samples AS
SELECT b.id                                                     AS block,
       b.metric                                                 AS metric,
       b.first_pos + e.key * b.pos_step + json_extract(e.value, '$[0]') AS pos,
       b.first_ms + e.key * b.ms_step + json_extract(e.value, '$[1]')   AS ts_ms,
       json_extract(e.value, '$[2]')                            AS value,
       b.first_pos                                              AS block_first_pos,
       b.min_ms                                                 AS block_min_ms,
       b.max_ms                                                 AS block_max_ms
FROM sample_blocks b, json_each(b.readings) e;

-- Compaction's progress: every slab below this position has been moved.
INSERT INTO hub_state (key, value) VALUES ('compacted_through', 0);

DROP VIEW readings;
CREATE VIEW readings AS
SELECT s.pos        AS pos,
       d.device_id  AS device,
       m.name       AS metric,
       m.unit       AS unit,
       s.ts_ms      AS ts_ms,
       s.value      AS value
FROM samples s
JOIN metrics m ON m.id = s.metric
JOIN devices d ON d.id = m.device
UNION ALL
SELECT c.pos, d.device_id, m.name, m.unit, c.ts_ms, c.value
FROM compacted_samples c
JOIN metrics m ON m.id = c.metric
JOIN devices d ON d.id = m.device;
