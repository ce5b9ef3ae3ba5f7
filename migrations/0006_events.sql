-- Events: what happens to a device besides its readings (today its status:
-- connected or not), each at a storage position of the same sequence as
-- `samples.pos`. A position is a reading's or an event's, never both, so
-- the live stream's ids, `Last-Event-ID` resume and every cursor consumer
-- see readings and events in one order. The writer moves
-- `sqlite_sequence`'s row for `samples` past each event's position, so the
-- last position ever assigned stays one number whoever took it.
--
-- `kind` names the event (`status`); `body` is its JSON, without the kind:
-- `{"online":true}`. For sqlite3 users, `device_events` shows device ids:
--   SELECT device, ts_ms, json_extract(body, '$.online') AS online
--   FROM device_events WHERE kind = 'status' ORDER BY pos DESC LIMIT 20;
CREATE TABLE events (
    pos    INTEGER PRIMARY KEY,
    device INTEGER NOT NULL REFERENCES devices(id),
    ts_ms  INTEGER NOT NULL,                        -- the hub's clock, ms since the epoch
    kind   TEXT    NOT NULL,
    body   TEXT    NOT NULL
);
-- Retention deletes events by time, as it does readings.
CREATE INDEX events_by_time ON events(ts_ms);

CREATE VIEW device_events AS
    SELECT e.pos, d.device_id AS device, e.ts_ms, e.kind, e.body
    FROM events e JOIN devices d ON d.id = e.device;
