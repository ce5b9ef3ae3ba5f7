-- Queries by time on compacted history. `readings` computes a compacted
-- reading's ts_ms from its block's JSON, so SQLite cannot use a bound on
-- ts_ms to skip blocks: a query for one hour of one metric decodes every
-- block the metric has. `readings_by_time` is `readings` with each
-- reading's block bounds beside it (a row of `samples` is its own block:
-- both bounds are its ts_ms), for a query to name the blocks it needs:
--
--   SELECT ts_ms, value FROM readings_by_time
--   WHERE device = 'sim-0001' AND metric = 'temperature'
--     AND block_max_ms >= :from AND block_min_ms <= :to
--     AND ts_ms BETWEEN :from AND :to;
--
-- The index below answers the two bounds: it seeks to the metric's first
-- block ending at or after :from and tests block_min_ms in the index
-- entry, decoding only the blocks that overlap the range.
DROP INDEX sample_blocks_by_metric_time;
CREATE INDEX sample_blocks_by_metric_time ON sample_blocks (metric, max_ms, min_ms);

CREATE VIEW readings_by_time AS
SELECT s.pos        AS pos,
       d.device_id  AS device,
       m.name       AS metric,
       m.unit       AS unit,
       s.ts_ms      AS ts_ms,
       s.value      AS value,
       s.ts_ms      AS block_min_ms,
       s.ts_ms      AS block_max_ms
FROM samples s
JOIN metrics m ON m.id = s.metric
JOIN devices d ON d.id = m.device
UNION ALL
SELECT c.pos, d.device_id, m.name, m.unit, c.ts_ms, c.value, c.block_min_ms, c.block_max_ms
FROM compacted_samples c
JOIN metrics m ON m.id = c.metric
JOIN devices d ON d.id = m.device;
