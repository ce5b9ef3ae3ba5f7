-- Alerts: rules the hub evaluates, and every transition of every alert.
--
-- A rule is kept as the JSON the API and `hub alert add` take (its fields
-- are in README.md, "Alerts"), under its name. The hub reads this table
-- every second, so a rule added or removed by `hub alert` while the hub
-- runs takes effect within a second.
CREATE TABLE alert_rules (
    name       TEXT    PRIMARY KEY,
    definition TEXT    NOT NULL,                   -- JSON, as validated
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;

-- Each transition of an alert (firing, acknowledged, resolved) is an
-- `alert` event of its device in `events`, at a position of the one
-- sequence: the live stream carries it and resumes past it like a
-- reading. An alert's id is the position of its `firing` event; later
-- transitions name it in `body.alert`. Retention keeps them (they are
-- few, and a report over a year of alerts is the point of keeping them).
CREATE INDEX events_alerts ON events (pos) WHERE kind = 'alert';

-- History: one row per transition, newest last.
--   SELECT device, rule, state, value, datetime(ts_ms / 1000, 'unixepoch')
--   FROM alert_events ORDER BY pos DESC LIMIT 20;
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

-- Current state: one row per alert, `state` its latest transition's.
--   SELECT device, rule, severity, message FROM alerts WHERE state <> 'resolved';
--   SELECT rule, count(*), avg(resolved_ms - fired_ms) / 60000.0 AS minutes
--   FROM alerts WHERE resolved_ms IS NOT NULL GROUP BY rule;
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
