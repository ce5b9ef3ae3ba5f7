-- Small facts the hub keeps about itself.
-- retention_deleted_through: the largest storage position retention has
-- deleted. A live subscriber resuming from below it may have missed readings
-- and is told so with a `reset` event.
CREATE TABLE hub_state (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO hub_state (key, value) VALUES ('retention_deleted_through', 0);
